import numpy as np
import pytest

from custseg.errors import InputError
from custseg.io import load_customers
from custseg.preprocess import prepare_features, scale_features


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
