import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from custseg.errors import InputError, UntrustedModelError
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
    assert pred["segment_name"].iloc[2] == "no segment: missing feature"
    assert pred["out_of_range"].tolist() == ["", "", "", "income"]
    assert list(pred.columns) == ["id", "income", "score", "segment", "segment_name",
                                  "distance", "margin", "out_of_range"]  # fmt: skip
    assert (pred["margin"].dropna() >= 0).all()
    np.testing.assert_allclose(pred["distance"].iloc[[0, 1, 3]],
                               np.sqrt(d.min(1)).round(6), atol=1e-6)  # fmt: skip


def test_function_transformer_is_trusted_only_with_log1p(tmp_path):
    """skops itself trusts FunctionTransformer and every numpy ufunc; our explicit list trusts
    the log1p transform custseg saves, and no other function in it."""
    import skops.io as sio
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from custseg.preprocess import make_preprocessor

    frame = pd.DataFrame(np.random.default_rng(0).random((20, 2)), columns=["a", "b"])
    ours = Pipeline([("scaler", make_preprocessor("minmax", transform="log1p")),
                     ("kmeans", KMeans(2, n_init=1, random_state=0))]).fit(frame)  # fmt: skip
    (tmp_path / "ours.skops").write_bytes(sio.dumps(ours))
    loaded = load_model(str(tmp_path / "ours.skops"))
    np.testing.assert_allclose(loaded.transform(frame), ours.transform(frame))
    np.testing.assert_allclose(
        model_info(loaded).centroids,
        np.expm1(ours[0][-1].inverse_transform(ours[-1].cluster_centers_)),
    )

    sneaky = Pipeline([("scaler", FunctionTransformer(np.exp)),
                       ("kmeans", KMeans(2, n_init=1, random_state=0))]).fit(frame)  # fmt: skip
    (tmp_path / "m.skops").write_bytes(sio.dumps(sneaky))
    with pytest.raises(UntrustedModelError) as err:
        load_model(str(tmp_path / "m.skops"))
    msg = str(err.value)
    assert "refusing to load model" in msg and "numpy.exp" in msg
    assert "numpy.log1p" not in msg and str(tmp_path / "m.skops") in msg


def test_pickle_renamed_to_skops_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    # a hand-written pickle that would run `touch <marker>` if anything unpickled it
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    (tmp_path / "m.skops").write_bytes(payload)
    with pytest.raises(InputError, match=r"m.skops: not a skops model file"):
        load_model(str(tmp_path / "m.skops"))
    assert not marker.exists()


def test_zip_without_skops_schema_and_missing_file_are_clear(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.skops", "w") as zf:
        zf.writestr("data.txt", "hello")
    with pytest.raises(InputError, match="not a skops model file"):
        load_model(str(tmp_path / "m.skops"))
    with pytest.raises(InputError, match="model file not found"):
        load_model(str(tmp_path / "nope.skops"))


def test_no_pickle_loading_anywhere_in_the_code():
    """No module of ours (library, DAGs, benchmarks) uses pickle, joblib, cloudpickle or dill
    for files (joblib's loky process pool and `custseg.forked`'s multiprocessing pipe, which
    pickle task arguments and results between our own processes, are its only uses)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    banned = re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|_pickle|joblib(?!\.externals\.loky\b)|cloudpickle"
        r"|dill|shelve)\b"
        r"|\b(read_pickle|to_pickle|pickle\.loads?|joblib\.load)\b|allow_pickle\s*=\s*True",
        re.M,
    )
    files = [p for d in ("src", "dags", "bench") for p in (root / d).rglob("*.py")]
    assert any(p.name == "model.py" for p in files)  # the scan does see the code
    hits = [f"{p.relative_to(root)}: {m.group(0).strip()}" for p in files
            for m in banned.finditer(p.read_text())]  # fmt: skip
    assert hits == []


def test_align_segments_keeps_ids_of_matching_centroids():
    from custseg.model import align_segments

    old = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    new = np.array([[89.0, 12.0], [11.0, 9.0], [51.0, 48.0]])  # same segments, other order
    al = align_segments(new, old)
    assert al.order == (2, 0, 1) and al.max_distance == pytest.approx(0.5 * np.hypot(40, 40))
    assert [m["previous_id"] for m in al.matches] == [0, 1, 2]
    # one more segment: the new one takes the free id 3; one far away does not match
    grown = np.vstack([new, [[50.0, 95.0]]])
    assert align_segments(grown, old).order == (2, 0, 1, 3)
    moved = np.array([[89.0, 12.0], [11.0, 9.0], [50.0, 90.0]])
    al = align_segments(moved, old)
    assert al.order == (2, 0, 1) and al.matches[1]["previous_id"] is None
    # fewer segments: an old id >= k cannot be kept
    assert align_segments(np.array([[89.0, 12.0], [51.0, 48.0]]), old).order == (0, 1)


def test_renumbered_model_predicts_the_nearest_renumbered_centroid(fitted):
    from custseg.model import renumber_segments

    X, model = fitted
    before = model.predict(_frame(X))
    renumber_segments(model[-1], [2, 0, 1])
    after = model.predict(_frame(X))
    np.testing.assert_array_equal(after, np.array([2, 0, 1])[before])
    np.testing.assert_array_equal(model[-1].labels_, after)
    scaled = model[0].transform(_frame(X))
    nearest = ((scaled[:, None] - model[-1].cluster_centers_[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(after, nearest)
    with pytest.raises(ValueError, match="not a permutation"):
        renumber_segments(model[-1], [0, 0, 1])


def _frame(X):
    import pandas as pd

    return pd.DataFrame(X, columns=["income", "score"])


@pytest.mark.parametrize("scaler", ["minmax", "standard", "robust", "none"])
def test_every_scaler_round_trips_and_predicts(tmp_path, scaler):
    X = np.vstack([np.random.default_rng(0).normal(c, 1, (40, 2)) for c in (0, 20, 40)]) + 50
    model = fit_segments(X, ("income", "score"), k=3, scaler=scaler, seed=1, n_init=3)
    save_model(model, str(tmp_path / "m.skops"))
    back = load_model(str(tmp_path / "m.skops"))
    info = model_info(back)
    assert info.features == ("income", "score") and info.k == 3
    # centroids in original units: each lies at one of the three blobs' means
    means = np.array([X[i * 40 : (i + 1) * 40].mean(axis=0) for i in range(3)])
    np.testing.assert_allclose(np.sort(info.centroids[:, 0]), np.sort(means[:, 0]), atol=1e-6)
    p = tmp_path / "t.csv"
    p.write_text("id,income,score\n1,50,50\n2,90,90\n")
    table = load_customers(str(p), features=["income", "score"])
    pred = predict_segments(back, table, train_min=list(X.min(0)), train_max=list(X.max(0)))
    assert pred["segment"].tolist() == model.predict(table.frame[["income", "score"]]).tolist()


def test_a_scaler_fit_beforehand_gives_the_same_model(fitted):
    """The CLI fits the scaler once (for the sweep sample) and hands it to the final fit."""
    import pandas as pd
    from sklearn.preprocessing import MinMaxScaler

    X, model = fitted
    scaler = MinMaxScaler().fit(pd.DataFrame(X, columns=["income", "score"]))
    again = fit_segments(X, ("income", "score"), k=3, scaler=scaler, seed=1, n_init=3)
    assert again[0] is scaler
    np.testing.assert_array_equal(again[-1].cluster_centers_, model[-1].cluster_centers_)
    assert again[-1].inertia_ == model[-1].inertia_
    assert list(again.feature_names_in_) == ["income", "score"]


def test_final_fit_on_distinct_rows_equals_the_fit_on_every_row():
    """Integer features: the weighted fit over distinct rows gives the all-rows K-Means."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(c, 6, (20_000, 2)).round() for c in (20, 50, 80)])
    init = np.array([[0.1, 0.1], [0.5, 0.6], [0.9, 0.8]])
    model = fit_segments(X, ("income", "score"), k=3, scaler="minmax", seed=1, n_init=3,
                         init=init)  # fmt: skip
    import pandas as pd

    scaled = model[0].transform(pd.DataFrame(X, columns=["income", "score"]))
    full = KMeans(3, init=init, n_init=1).fit(scaled)
    np.testing.assert_allclose(model[-1].cluster_centers_, full.cluster_centers_, atol=1e-9)
    assert model[-1].inertia_ == pytest.approx(full.inertia_, rel=1e-9)
    np.testing.assert_array_equal(model[-1].labels_, full.labels_)
    assert len(model[-1].labels_) == len(X)


def test_loading_a_model_beside_airflow_logs_no_warning_flood(tmp_path, sample_csv):
    """In a task process skops' import-time scan probed Airflow's deprecated shim modules:
    1,160 DeprecatedImportWarning lines in load_model_task's log."""
    import subprocess
    import sys

    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline

    summary = run_pipeline(PipelineConfig(k_max=6, n_init=2, select="elbow"),
                           input_path=str(sample_csv), out=str(tmp_path))  # fmt: skip
    code = (
        "import warnings, airflow.sdk, airflow.utils.trigger_rule, airflow.utils.timezone\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    from custseg.model import load_model\n"
        f"    model = load_model({summary['run_dir'] + '/model.skops'!r})\n"
        "print(len(caught), model[-1].n_clusters)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out.split() == ["0", str(summary["chosen_k"])]
