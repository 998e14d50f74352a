import numpy as np
import pandas as pd
import pytest

from custseg.errors import InputError
from custseg.io import _id_series, load_customers
from custseg.preprocess import (
    _repeated_id_rows,
    _repeated_keys,
    count_distinct_rows,
    minmax_scaled,
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
    expected = {
        "minmax": [[0.0, 0.0], [1 / 3, 1.0], [1.0, 0.5]],
        # mean (7/3, 20), population std (1.2472, 8.1650)
        "standard": [[-1.0690, -1.2247], [-0.2673, 1.2247], [1.3363, 0.0]],
        # median (2, 20), IQR (1.5, 10)
        "robust": [[-2 / 3, -1.0], [0.0, 1.0], [4 / 3, 0.0]],
        "none": X.tolist(),
    }[name]
    np.testing.assert_allclose(Xs, expected, atol=1e-4)
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
        [str(v).zfill(6) for v in rng.permutation(3000)],  # unsorted, unique: the bitmap
        [str(v * 10007).zfill(12) for v in rng.integers(0, 900, size=1000)],  # sparse: a sort
        ["b", "c", "a", "d", "c"],  # not digits, unsorted
        ["a", "b", "c", "d"],  # increasing text: no repeats
        ["0002", None, "0001", None, "0001"],  # a missing id
        ["\u0663", "\u0661", "\u0663"],  # Arabic-Indic digits are not int64 keys
    ]
    for ids in cases:
        series = _id_series(pd.Series(ids))
        np.testing.assert_array_equal(_repeated_id_rows(series), _repeated_reference(ids))


def test_repeated_ids_across_arrow_chunks():
    import pyarrow as pa

    cases = [
        [["0001", "0002"], ["0002", "0003"]],  # the repeat straddles a chunk boundary
        [["0001", "0002"], ["0003"], ["0004", "0005"]],  # increasing through the chunks
        [["x", "y"], ["z", "x"]],
    ]
    for chunks in cases:
        series = _id_series(pa.chunked_array(chunks))
        ids = [v for chunk in chunks for v in chunk]
        assert series.tolist() == ids
        np.testing.assert_array_equal(_repeated_id_rows(series), _repeated_reference(ids))


def test_repeated_keys_match_pandas_dense_and_sparse():
    rng = np.random.default_rng(2)
    cases = {
        "dense unique": rng.permutation(20_000).astype(np.int64) + 5,
        "dense repeats": rng.integers(-50, 20_000, size=20_000),
        "sparse unique": rng.permutation(20_000).astype(np.int64) * 1_000_003,
        "sparse repeats": rng.integers(0, 30_000, size=20_000) * 1_000_003,
        "one key": np.array([7], dtype=np.int64),
    }
    for name, keys in cases.items():
        expected = pd.Series(keys).duplicated(keep=False).to_numpy()
        np.testing.assert_array_equal(_repeated_keys(keys), expected, err_msg=name)
    assert not _repeated_keys(cases["dense unique"]).any()
    assert _repeated_keys(cases["sparse repeats"]).any()


def test_clean_table_keeps_every_row_in_an_own_array(tmp_path):
    p = tmp_path / "c.csv"
    rows = "".join(f"{i:05d},{i % 13},{i % 7}\n" for i in (3, 1, 2, 5, 4))  # unsorted ids
    p.write_text("CustomerID,income,score\n" + rows)
    table = load_customers(str(p), features=["income", "score"])
    data = prepare_features(table)
    assert data.dropped == {} and data.n_distinct == 5
    assert data.X.tolist() == [[3, 3], [1, 1], [2, 2], [5, 5], [4, 4]]
    assert data.ids.tolist() == ["00003", "00001", "00002", "00005", "00004"]
    assert data.X.flags.f_contiguous and data.X.flags.writeable  # column-major: fast reductions
    assert not np.shares_memory(data.X, table.frame["income"].to_numpy())


def test_missing_and_non_numeric_counted_once_each(tmp_path):
    p = tmp_path / "c.csv"
    body = "1,10,20\n2,?,21\n3,abc,22\n4,13,\n5,1e400,24\n6,15,25\n7,16,26\n8,17,27\n"
    p.write_text("CustomerID,income,score\n" + body)
    data = prepare_features(load_customers(str(p), features=["income", "score"]))
    assert data.dropped == {"missing": 2, "non_numeric": 1, "non_finite": 1}
    assert data.ids.tolist() == ["1", "6", "7", "8"]
    assert any("missing a feature in ['income', 'score'] (line 3, 5)" in w for w in data.warnings)


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


def test_distinct_rows_rebuild_the_table_with_counts():
    from custseg.preprocess import distinct_rows

    rng = np.random.default_rng(4)
    X = np.asfortranarray(rng.integers(0, 30, size=(50_000, 2)).astype(float))
    X[::7, 1] = -0.0 * X[::7, 1]  # -0.0 is the same point as 0.0
    d = distinct_rows(X)
    assert d is not None and len(d.rows) == len(np.unique(X + 0.0, axis=0)) == 900
    np.testing.assert_array_equal(d.rows[d.index], X)
    assert d.counts.sum() == len(X)
    assert d.counts.tolist() == np.bincount(d.index).tolist()


def test_distinct_rows_declines_continuous_data():
    from custseg.preprocess import distinct_rows

    X = np.random.default_rng(5).random((20_000, 2))
    assert distinct_rows(X) is None  # every row distinct: nothing to gain
    Y = np.random.default_rng(6).integers(0, 5, size=(20_000, 3)).astype(float)
    d = distinct_rows(Y)
    assert d is not None and len(d.rows) == 125 and (d.rows[d.index] == Y).all()


def test_minmax_scaled_is_sklearns_bit_for_bit(mall_csv, messy_csv):
    """The sweep of a small table scales in NumPy (before scikit-learn is imported): the same
    bits as the model's MinMaxScaler, fit on every row and applied to a sample."""
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.default_rng(0)
    tables = [prepare_features(load_customers(str(p))).X for p in (mall_csv, messy_csv)]
    wide = rng.normal(size=(500, 6)) * [1e-9, 1, 1e6, 3, 7e3, 1]
    wide[:, 3] = 2.5  # a constant column: sklearn scales it by 1
    wide[:, 5] = 1 + rng.integers(0, 2, 500) * 1e-17 * 8  # spread below 10 eps: also by 1
    tables += [wide, -np.abs(rng.standard_cauchy(size=(300, 3)))]
    for X in tables:
        part = X[rng.choice(len(X), len(X) // 3, replace=False)]
        frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])], copy=False)
        scaler = MinMaxScaler().fit(frame)
        want = scaler.transform(pd.DataFrame(part, columns=frame.columns))
        got = minmax_scaled(X, part)
        assert got.dtype == np.float64 and got.shape == part.shape
        assert np.array_equal(got, want), np.abs(got - want).max()
        assert np.array_equal(minmax_scaled(X, X), scaler.transform(frame))


def test_row_codes_number_equal_rows_alike_in_order_of_first_appearance():
    """`_row_codes` gives equal rows one code (-0.0 as 0.0), numbered in order of first
    appearance, as a dict over the rows' tuples does; one column is its own codes. (Rows
    with a missing feature are dropped before the final fit deduplicates.)"""
    import numpy as np

    from custseg.preprocess import _row_codes

    rng = np.random.default_rng(11)
    for shape in ((3000, 3), (3000, 1), (50, 2)):
        X = rng.integers(-3, 4, shape).astype(np.float64)
        X[X == 0] *= np.where(rng.random(int((X == 0).sum())) < 0.5, -1.0, 1.0)  # -0.0 too
        seen: dict[tuple, int] = {}
        expected = [seen.setdefault(tuple(v + 0.0 for v in row), len(seen)) for row in X.tolist()]
        codes, m = _row_codes(X)
        assert codes.tolist() == expected and m == len(seen) and codes.dtype == np.int64
