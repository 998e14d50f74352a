import io
import json
import zipfile

import numpy as np
import pytest

from custseg.errors import UntrustedModelError
from custseg.io import load_customers
from custseg.model import fit_segments, load_model, model_info, predict_segments, save_model


@pytest.fixture()
def fitted():
    X = np.vstack([np.random.default_rng(0).normal(c, 1, (40, 2)) for c in (0, 20, 40)]) + 50
    return X, fit_segments(X, ("income", "score"), k=3, scaler="minmax", seed=1, n_init=3)


def test_save_load_round_trip(tmp_path, fitted):
    X, model = fitted
    save_model(model, str(tmp_path / "m.skops"))
    back = load_model(str(tmp_path / "m.skops"))
    info = model_info(back)
    assert info.k == 3 and info.features == ("income", "score")
    np.testing.assert_allclose(back[-1].cluster_centers_, model[-1].cluster_centers_)


def test_crafted_model_with_foreign_type_is_refused(tmp_path, fitted):
    _, model = fitted
    save_model(model, str(tmp_path / "m.skops"))
    src = zipfile.ZipFile(tmp_path / "m.skops")
    schema = json.loads(src.read("schema.json"))
    schema["content"]["__module__"] = "os"
    schema["content"]["__class__"] = "system"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for name in src.namelist():
            data = json.dumps(schema) if name == "schema.json" else src.read(name)
            out.writestr(name, data)
    (tmp_path / "evil.skops").write_bytes(buf.getvalue())
    with pytest.raises(UntrustedModelError, match=r"untrusted types \['os.system'\]"):
        load_model(str(tmp_path / "evil.skops"))


def test_predictions_are_nearest_scaled_centroid(tmp_path, fitted):
    X, model = fitted
    p = tmp_path / "t.csv"
    p.write_text("id,income,score\n1,50,50\n2,90,90\n3,,70\n4,500,60\n")
    table = load_customers(str(p), features=["income", "score"])
    pred = predict_segments(model, table, train_min=list(X.min(0)), train_max=list(X.max(0)))
    scaled = model[0].transform(table.frame[["income", "score"]].iloc[[0, 1, 3]])
    d = ((scaled[:, None] - model[-1].cluster_centers_[None]) ** 2).sum(-1)
    assert pred["segment"].iloc[[0, 1, 3]].tolist() == d.argmin(1).tolist()
    assert pred["segment"].isna().tolist() == [False, False, True, False]
    assert pred["note"].iloc[2] == "missing feature"
    assert pred["out_of_range"].tolist() == ["", "", "", "income"]
