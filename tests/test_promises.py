"""README promises that had no test of their own: id columns, missing tokens, identical rows,
damaged archives, the out-of-range boundary, the k-choice caps and the metrics keys."""

from __future__ import annotations

import bz2
import io
import lzma
import zipfile

import numpy as np
import pandas as pd
import pytest

from custseg.errors import InputError
from custseg.io import load_customers
from custseg.preprocess import prepare_features

FEATS = ["Annual Income (k$)", "Spending Score (1-100)"]


def write(path, text: str | bytes):
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.mark.parametrize("name", ["CustomerID", "customer_id", "id", "Client ID"])
def test_id_columns_are_found_and_kept_as_text(tmp_path, name):
    path = write(tmp_path / "c.csv", f"{name},Annual Income (k$),Spending Score (1-100)\n"
                 "007,10,20\n008,11,30\n")  # fmt: skip
    table = load_customers(str(path))
    assert table.id_column == name and table.frame[name].tolist() == ["007", "008"]


@pytest.mark.parametrize("token", ["?", "NA", "N/A", "NaN", "null", "None", "-", ""])
def test_missing_tokens_drop_the_row_as_missing(tmp_path, token):
    rows = "".join(f"{i},{10 + i},{i * 7 % 50}\n" for i in range(1, 11))
    path = write(tmp_path / "m.csv", "CustomerID,Annual Income (k$),Spending Score (1-100)\n"
                 + rows + f"11,{token},40\n")  # fmt: skip
    data = prepare_features(load_customers(str(path)))
    assert data.dropped == {"missing": 1} and data.n_rows_used == 10
    assert "line 12" in data.warnings[0]


def test_identical_rows_without_an_id_are_all_kept(tmp_path):
    path = write(tmp_path / "n.csv", "Annual Income (k$),Spending Score (1-100)\n"
                 "10,20\n10,20\n10,20\n30,40\n")  # fmt: skip
    data = prepare_features(load_customers(str(path)))
    assert data.n_rows_used == 4 and data.dropped == {}


def test_line_numbers_are_the_files_own_across_blank_lines_and_quoted_newlines(tmp_path):
    """Blank lines used to shift the numbers after them, and so did a quoted field holding a
    line break (issue: warning lines off by one); both now count as the file's lines."""
    path = write(
        tmp_path / "b.csv",
        "CustomerID,Annual Income (k$),Spending Score (1-100)\n"
        "1,10,20\n\n2,abc,30\n" + "".join(f"{i},{i},{i}\n" for i in range(3, 12)),
    )
    data = prepare_features(load_customers(str(path)))
    assert data.dropped == {"non_numeric": 1}
    assert "line 4: 'abc'" in " ".join(data.warnings)  # the file's own line
    quoted = write(tmp_path / "q.csv", "CustomerID,Note,Annual Income (k$),Spending Score (1-100)\n"
                   '1,"two\nlines",10,20\n2,x,abc,30\n'
                   + "".join(f"{i},y,{i},{i}\n" for i in range(3, 12)))  # fmt: skip
    data = prepare_features(load_customers(str(quoted)))
    assert "line 4: 'abc'" in " ".join(data.warnings), data.warnings


GOOD = "CustomerID,Annual Income (k$),Spending Score (1-100)\n" + "".join(
    f"{i},{10 + i},{i * 7 % 50}\n" for i in range(1, 31)
)


@pytest.mark.parametrize(("kind", "data"), [
    ("bz2", bz2.compress(GOOD.encode())[:30]),
    ("xz", lzma.compress(GOOD.encode())[:40]),
    ("zstd", b"\x28\xb5\x2f\xfd" + b"\x00garbage-not-a-frame"),
    ("zip", b"PK\x03\x04" + b"\x00" * 40),
])  # fmt: skip
def test_damaged_archives_are_refused_in_one_line(tmp_path, kind, data):
    path = write(tmp_path / f"d.{kind}", data)
    with pytest.raises(InputError) as err:
        load_customers(str(path))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    assert "damaged" in msg or "not a" in msg or "binary" in msg


@pytest.mark.parametrize("magic", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0JFIF", b"%PDF-1.4"])
def test_images_and_documents_are_refused_as_not_a_table(tmp_path, magic):
    path = write(tmp_path / "x.csv", magic + b"\x00" * 200)
    with pytest.raises(InputError, match="looks binary"):
        load_customers(str(path))


def test_a_zip_of_one_csv_is_read(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("customers.csv", GOOD)
    assert load_customers(str(write(tmp_path / "c.zip", buf.getvalue()))).n_rows_read == 30


def test_out_of_range_flags_beyond_ten_percent_of_the_width(tmp_path):
    """Training income 10..110 (width 100): 120 is inside the margin, 120.5 beyond it."""
    from custseg.model import fit_segments, predict_segments

    X = np.array([[10.0, 0.0], [110.0, 100.0], [60.0, 50.0], [20.0, 80.0]])
    model = fit_segments(X, tuple(FEATS), k=2, scaler="minmax", seed=0, n_init=2)
    path = write(tmp_path / "t.csv", "CustomerID,Annual Income (k$),Spending Score (1-100)\n"
                 "1,120,50\n2,120.5,50\n3,-0.5,50\n4,0,-10\n")  # fmt: skip
    pred = predict_segments(model, load_customers(str(path)), train_min=[10.0, 0.0],
                            train_max=[110.0, 100.0])  # fmt: skip
    assert pred["out_of_range"].tolist() == ["", "Annual Income (k$)", "Annual Income (k$)", ""]


def test_k_choice_caps_and_recorded_keys():
    """Silhouette on at most 4,000 rows and gap references of at most 2,000 rows, whatever
    the sample; metrics record hopkins, gap_gain_over_k1 and the reason."""
    from custseg.criteria import GAP_ROWS, SILHOUETTE_ROWS, CriteriaScorer, choose_auto
    from custseg.generate import make_clusters
    from custseg.sweep import sweep_k

    X = np.asarray(make_clusters(6000, 3, seed=4)[0], dtype=float)
    X = (X - X.min(0)) / np.ptp(X, 0)
    scorer = CriteriaScorer(X, seed=1)
    assert (SILHOUETTE_ROWS, GAP_ROWS) == (4000, 2000)
    assert len(scorer.sil_idx) == 4000 and all(len(r) == 2000 for r in scorer.refs)
    sweep = sweep_k(X, range(1, 7), seed=1, n_init=2, scorer=scorer)
    details = choose_auto(sweep, X, seed=1).to_dict()
    assert details["chosen_k"] == 3
    assert set(details["hopkins"]) == {"statistic", "p_value", "alpha"}
    assert details["hopkins"]["statistic"] > 0.9 and details["gap_gain_over_k1"] > 0
    assert details["reason"].startswith("3 of 4 criteria pick k=3") or "pick k=3" in details[
        "reason"]  # fmt: skip


def test_sse_csv_has_one_row_per_k(tmp_path, sample_csv):
    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline

    summary = run_pipeline(PipelineConfig(k_min=2, k_max=7, n_init=2, select="elbow"),
                           input_path=str(sample_csv), out=str(tmp_path))  # fmt: skip
    sse = pd.read_csv(f"{summary['run_dir']}/sse.csv")
    assert sse["k"].tolist() == [2, 3, 4, 5, 6, 7] and sse["sse"].is_monotonic_decreasing


def test_confidence_thresholds():
    """high: >= 3 of 4 criteria and >= 80% of resamples agree; medium: >= 2 of 4 and >= 60%;
    else low; k = 1 is high when Hopkins' p > 0.1."""
    from custseg.criteria import Stability, _confidence

    def stab(agreement):
        return Stability(agreement, (), 0.9)

    assert _confidence(5, 0.75, stab(0.8), 0.0) == "high"
    assert _confidence(5, 0.75, stab(0.79), 0.0) == "medium"
    assert _confidence(5, 0.5, stab(0.6), 0.0) == "medium"
    assert _confidence(5, 0.5, stab(0.59), 0.0) == "low"
    assert _confidence(5, 0.25, stab(1.0), 0.0) == "low"
    assert _confidence(1, 0.0, stab(float("nan")), 0.2) == "high"
    assert _confidence(1, 0.0, stab(float("nan")), 0.05) == "medium"


def test_vote_tie_break_goes_to_the_higher_mean_normalised_score():
    from custseg.criteria import combine

    values = {"silhouette": {2: 0.5, 3: 0.9}, "calinski_harabasz": {2: 10.0, 3: 20.0},
              "davies_bouldin": {2: 0.5, 3: 0.4}}  # fmt: skip
    # one vote each for 2 and 3: the tie goes to 3, better on every normalised criterion
    assert combine(values, {"silhouette": 2, "calinski_harabasz": 3}) == 3
    assert combine(values, {"silhouette": 2, "calinski_harabasz": 2, "gap": 3}) == 2


def test_a_single_blob_gives_one_segment_by_the_gap_rule():
    """Not uniform (Hopkins rejects uniformity) but one Gaussian blob: the gap at the voted
    k is not one standard error above k = 1, so auto answers 1."""
    from custseg.criteria import CriteriaScorer, choose_auto
    from custseg.sweep import sweep_k

    X = np.random.default_rng(3).normal(size=(1500, 2))
    X = (X - X.min(0)) / np.ptp(X, 0)
    sweep = sweep_k(X, range(1, 9), seed=2, n_init=3, scorer=CriteriaScorer(X, seed=2))
    sel = choose_auto(sweep, X, seed=2)
    assert sel.chosen_k == 1, sel.reason
    assert "gap statistic" in sel.reason and sel.details["gap_gain_over_k1"] <= 0
    assert sel.details["hopkins"]["p_value"] < 0.01  # structured, yet one segment


def test_latest_json_is_written_last_on_object_storage(monkeypatch, sample_csv):
    """On object storage there is no rename: metrics.json, then latest.json, are the last two
    writes of a run, so a reader never sees a pointer to an incomplete run."""
    import uuid

    from custseg import storage
    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline

    writes: list[str] = []
    for name in ("write_bytes", "replace_atomic"):
        real = getattr(storage, name)

        def spy(uri, data, _real=real):
            _real(uri, data)
            writes.append(uri.rsplit("/", 1)[-1])

        monkeypatch.setattr(storage, name, spy)
    root = f"memory://custseg-{uuid.uuid4().hex[:8]}"
    run_pipeline(PipelineConfig(k_max=6, n_init=2, select="elbow"), input_path=str(sample_csv),
                 out=root)  # fmt: skip
    assert writes[-2:] == ["metrics.json", "latest.json"]
    assert {"model.skops", "report.html", "profile.csv"} <= set(writes[:-2])
