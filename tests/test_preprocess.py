import numpy as np
import pandas as pd
import pytest

from custseg.errors import InputError
from custseg.io import _id_series, load_customers
from custseg.preprocess import (
    _repeated_id_rows,
    count_distinct_rows,
    prepare_features,
    scale_features,
)


def test_messy_drops_missing_and_duplicates(messy_csv):
    data = prepare_features(load_customers(str(messy_csv)))
    assert data.n_rows_read == 812
    assert data.dropped == {"missing": 90, "duplicate": 12}
    assert data.n_rows_used == 812 - 90 - 12
    assert any("dropped 90 row(s) missing a feature" in w for w in data.warnings)


def test_conflicting_ids_reported_first_kept(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("CustomerID,income,score\n1,10,20\n1,10,20\n1,30,40\n2,50,60\n3,70,80\n")
    data = prepare_features(load_customers(str(p), features=["income", "score"]))
    assert data.dropped == {"duplicate": 1, "conflicting_id": 1}
    assert data.X.tolist() == [[10, 20], [50, 60], [70, 80]]
    assert any("'1' (line 4)" in w and "first row" in w for w in data.warnings)


def test_constant_feature_rejected(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,income,score\n1,10,5\n2,20,5\n3,30,5\n")
    with pytest.raises(InputError, match="feature 'score' is constant"):
        prepare_features(load_customers(str(p), features=["income", "score"]))


@pytest.mark.parametrize("name", ["minmax", "standard", "robust", "none"])
def test_scalers(name):
    X = np.array([[1.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    Xs = scale_features(X, scaler=name)
    if name == "minmax":
        assert Xs.min(axis=0).tolist() == [0, 0] and Xs.max(axis=0).tolist() == [1, 1]
    if name == "none":
        assert Xs is X


def test_count_distinct_rows_exact_and_capped():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 7, size=(100_000, 2)).astype(float)
    X[::3, 0] = -0.0 * X[::3, 0]  # -0.0 and 0.0 are the same point
    assert count_distinct_rows(X) == len(np.unique(X, axis=0)) == 49
    Y = rng.random((50_000, 3))
    assert count_distinct_rows(Y) == 50_000
    assert 50 <= count_distinct_rows(Y, cap=50) < 50_000  # stops early: "at least 50"


def _repeated_reference(ids):
    return pd.Series(list(ids), dtype=object).duplicated(keep=False).to_numpy()


def test_repeated_ids_fast_path_matches_pandas():
    rng = np.random.default_rng(1)
    cases = [
        ["0001", "0002", "0003"],  # sorted numbers: no repeats
        ["0003", "0001", "0003", "0002", "0001"],  # unsorted numbers with repeats
        ["1", "01", "001", "1"],  # different widths: "1" and "01" are different ids
        ["a1", "b2", "a1"],  # not digits
        [str(v).zfill(6) for v in rng.integers(0, 5000, size=3000)],
    ]
    for ids in cases:
        series = _id_series(pd.Series(ids))
        np.testing.assert_array_equal(_repeated_id_rows(series), _repeated_reference(ids))


def test_unique_ids_keep_every_row_and_ids_stay_arrow(tmp_path):
    p = tmp_path / "c.csv"
    rows = "".join(f"{i:05d},{i % 13},{i % 7}\n" for i in range(1, 301))
    p.write_text("CustomerID,income,score\n" + rows + "00005,5,5\n")  # exact duplicate of 00005
    data = prepare_features(load_customers(str(p), features=["income", "score"]))
    assert data.dropped == {"duplicate": 1}
    assert data.n_rows_used == 300
    assert isinstance(data.ids.dtype, pd.ArrowDtype)  # no per-row Python string objects
    assert data.ids.iloc[-1] == "00300"
    assert data.n_distinct == len(np.unique(data.X, axis=0))
