"""What an analyst reads: segment names, the k decision in words, files for spreadsheets."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.report import k_decision_text, segment_labels

BOM = b"\xef\xbb\xbf"
FEATURES = ("Annual Income (k$)", "Spending Score (1-100)")


@pytest.fixture(scope="module")
def mall_run(tmp_path_factory, mall_csv, sample_test_csv):
    out = tmp_path_factory.mktemp("report") / "out"
    summary = run_pipeline(PipelineConfig(k_max=10), input_path=str(mall_csv), out=str(out),
                           test_path=str(sample_test_csv), run_id="mall")  # fmt: skip
    run_dir = out / "runs" / "mall"
    return run_dir, json.loads((run_dir / "metrics.json").read_text()), summary


def test_names_compare_each_segment_with_all_customers(mall_run, mall_csv):
    _, metrics, _ = mall_run
    labels = {s["label"] for s in metrics["segments"]}
    assert labels == {
        "average income · average spending",
        "high income (+43%) · high spending (+64%)",
        "high income (+46%) · low spending (-66%)",
        "low income (-58%) · high spending (+58%)",
        "low income (-57%) · low spending (-58%)",
    }
    # the percentage is the difference of the means, as the report's note says
    mall = pd.read_csv(mall_csv)
    seg = next(s for s in metrics["segments"] if s["label"].startswith("high income (+43%)"))
    mean_all = mall[FEATURES[0]].mean()
    assert round(seg[f"mean {FEATURES[0]}"] / mean_all - 1, 2) == 0.43


def test_names_are_unique_even_when_the_words_repeat():
    population = np.array([[0.0, 0.0], [10.0, 10.0], [20.0, 20.0], [30.0, 30.0]])
    means = np.array([[15.0, 14.0], [15.5, 16.0], [30.0, 0.0]])
    labels = segment_labels(means, population, FEATURES)
    assert len(set(labels)) == 3
    assert labels[0] == "average income (+0%) · average spending (-7%)"
    assert labels[1] == "average income (+3%) · average spending (+7%)"
    assert labels[2] == "high income (+100%) · low spending (-100%)"
    same = segment_labels(np.array([[15.0, 15.0], [15.0, 15.0]]), population, FEATURES)
    assert same == ["average income (+0%) · average spending (+0%) (segment 0)",
                    "average income (+0%) · average spending (+0%) (segment 1)"]  # fmt: skip


def test_levels_follow_all_customers_not_the_range(messy_csv, tmp_path):
    """On the messy Mall data a segment with mean spending 79.6 was labelled "mid spending"
    (tertiles of the range). Now each level says where the segment's mean lies against all
    customers (mean 71.0, sd 21.1 on this file): 79.6 is average (+12%), and is named so."""
    run_pipeline(PipelineConfig(k_max=10), input_path=str(messy_csv), out=str(tmp_path),
                 run_id="messy")  # fmt: skip
    metrics = json.loads((tmp_path / "runs" / "messy" / "metrics.json").read_text())
    used = pd.read_csv(messy_csv, na_values="?").dropna(subset=list(FEATURES)).drop_duplicates()
    assert len(used) == metrics["n_rows_used"]
    for seg in metrics["segments"]:
        for feature, short in zip(FEATURES, ("income", "spending"), strict=True):
            col = used[feature]
            z = (seg[f"mean {feature}"] - col.mean()) / col.std(ddof=0)
            word = "high" if z >= 0.5 else "low" if z <= -0.5 else "average"
            assert f"{word} {short}" in seg["label"], (seg, feature, z)
        assert "mid " not in seg["label"]
    assert len({s["label"] for s in metrics["segments"]}) == len(metrics["segments"])


def test_the_k_decision_reads_as_a_sentence_with_one_elbow(mall_run):
    run_dir, metrics, _ = mall_run
    sel = metrics["selection"]
    text = k_decision_text({**sel, "chosen_k": metrics["chosen_k"]})
    knee = sel["knee"]
    assert sel["picks"]["elbow"] == knee and sel["elbow_k_range"] == [1, 10]
    assert text.startswith("5 segments. ")
    assert f"the elbow of the SSE curve (k = 1..10) is at {knee}" in text
    assert "of 5 resamples" in text and "Confidence is" in text
    report = (run_dir / "report.html").read_text()
    assert text.replace("'", "&#x27;") in report
    low = k_decision_text({**sel, "confidence": "low"})
    assert "Confidence is low: treat the segments as tentative. Try other features" in low


def test_csv_files_open_in_excel_and_keep_no_duplicate_columns(mall_run, sample_test_csv):
    run_dir, metrics, _ = mall_run
    for name in ("predictions.csv", "profile.csv", "assignments.csv", "sse.csv"):
        data = (run_dir / name).read_bytes()
        assert data.startswith(BOM), name
        data.decode("utf-8")
    profile = pd.read_csv(io.BytesIO((run_dir / "profile.csv").read_bytes()))
    assert list(profile.columns) == ["segment", "size", "share", "name", "label",
                                     f"mean {FEATURES[0]}", f"mean {FEATURES[1]}"]  # fmt: skip
    assert "·" in profile["label"].iloc[0]  # read back as UTF-8, not mojibake
    assigned = pd.read_csv(run_dir / "assignments.csv", dtype={"CustomerID": str})
    parquet = pd.read_parquet(run_dir / "assignments.parquet")
    assert assigned["CustomerID"].tolist() == parquet["CustomerID"].tolist()
    assert assigned["segment"].tolist() == parquet["segment"].tolist()
    assert len(assigned) == 200 and assigned["CustomerID"].iloc[0] == "0001"


def test_the_report_has_a_predictions_section(mall_run):
    run_dir, metrics, _ = mall_run
    report = (run_dir / "report.html").read_text()
    assert "<h2>Predictions</h2>" in report and "25 new customers scored" in report
    counts = metrics["predictions"]["segment_counts"]
    assert sum(counts.values()) == 25
    for seg, n in counts.items():
        name = next(s["label"] for s in metrics["segments"] if str(s["segment"]) == seg)
        assert f"<td>{seg}</td><td>{name}</td><td>{n}</td>" in report
    assert '<meta name="viewport"' in report  # reads at phone width


def _png_size(data: bytes) -> tuple[int, int]:
    import struct

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_three_features_are_plotted_as_every_pair():
    from custseg.report import segments_png

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    labels = (X[:, 2] > 0).astype(int)
    cents = np.array([X[labels == 0].mean(0), X[labels == 1].mean(0)])
    two = _png_size(segments_png(X[:, :2], labels, cents[:, :2], FEATURES, ["a", "b"]))
    three = _png_size(segments_png(X, labels, cents, (*FEATURES, "Age"), ["a", "b"]))
    # a 2 x 2 grid (3 pairs) instead of one panel: about twice as tall
    assert three[1] > 1.6 * two[1]


def test_many_features_are_mapped_on_their_principal_components():
    from sklearn.decomposition import PCA

    from custseg.report import _pca_map, segments_png

    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 6)) * [1, 2, 3, 4, 5, 6]
    names = tuple(f"f{i}" for i in range(6))
    P, C, axes, title = _pca_map(X, X[:3], names)
    Z = (X - X.mean(0)) / X.std(0)
    ref = PCA(n_components=2).fit_transform(Z)
    for c in range(2):  # the same components, up to their sign
        assert np.allclose(np.abs(P[:, c]), np.abs(ref[:, c]), atol=1e-8)
    assert axes[0].startswith("PC1 (") and "% of variance" in axes[0]
    assert title == "3 customer segments on a PCA map of 6 features"
    png = segments_png(X, np.arange(400) % 3, X[:3], names, ["a", "b", "c"])
    assert _png_size(png)[0] > 300


def test_every_column_is_profiled_by_segment(mall_run, mall_csv):
    run_dir, metrics, _ = mall_run
    rows = {(r["column"], r["statistic"]): r for r in metrics["column_profiles"]}
    assert {c for c, _ in rows} == {"Annual Income (k$)", "Spending Score (1-100)", "Age",
                                    "Genre"}  # fmt: skip
    assert {c for (c, _), r in rows.items() if r["clustered"]} == set(FEATURES)
    mall = pd.read_csv(mall_csv, dtype={"CustomerID": str})
    seg = pd.read_parquet(run_dir / "assignments.parquet").set_index("CustomerID")["segment"]
    mall["segment"] = mall["CustomerID"].map(seg)
    for s, group in mall.groupby("segment"):
        assert rows["Age", "mean"][str(s)] == round(group["Age"].mean(), 2)
        assert rows["Age", "median"][str(s)] == round(group["Age"].median(), 2)
        assert rows["Genre", "share Female"][str(s)] == round(
            (group["Genre"] == "Female").mean(), 4
        )
    assert rows["Genre", "share Male"]["all"] == round((mall["Genre"] == "Male").mean(), 4)
    # Gender barely separates the Mall customers: its agreement with the segments is ~0
    assert abs(rows["Genre", "agreement with the segments (ARI)"]["all"]) < 0.02
    report = (run_dir / "report.html").read_text()
    assert "<h2>Every column by segment</h2>" in report
    assert "Annual Income (k$) <b>(clustered)</b>" in report and "Age</td>" in report


def test_columns_are_matched_by_row_without_an_id_column(tmp_path, mall_csv):
    frame = pd.read_csv(mall_csv).drop(columns=["CustomerID"])
    frame.loc[3, "Annual Income (k$)"] = None  # a dropped row: later rows must still match
    path = tmp_path / "no_id.csv"
    frame.to_csv(path, index=False)
    run_pipeline(PipelineConfig(k_max=6), input_path=str(path), out=str(tmp_path / "o"),
                 run_id="r")  # fmt: skip
    metrics = json.loads((tmp_path / "o" / "runs" / "r" / "metrics.json").read_text())
    ages = next(r for r in metrics["column_profiles"] if r["column"] == "Age"
                and r["statistic"] == "mean")  # fmt: skip
    assert ages["all"] == round(frame.drop(index=3)["Age"].mean(), 2)


def test_your_segment_names_are_shown_and_carried_across_a_retrain(tmp_path, mall_csv,
                                                                   sample_test_csv):  # fmt: skip
    from custseg.cli import main

    names = tmp_path / "names.yaml"
    names.write_text("0: Steady middle\n1: VIPs\n3: Young enthusiasts\n")
    out = tmp_path / "out"
    args = ["--out", str(out), "--k-max", "10", "--no-progress"]
    assert main(["run", "--input", str(mall_csv), "--names", str(names), "--test",
                 str(sample_test_csv), "--run-id", "named", *args]) == 0  # fmt: skip
    first = json.loads((out / "runs" / "named" / "metrics.json").read_text())
    assert first["segment_names"] == {"0": "Steady middle", "1": "VIPs",
                                      "3": "Young enthusiasts"}  # fmt: skip
    by_id = {s["segment"]: s for s in first["segments"]}
    assert by_id[1]["name"] == "VIPs" and by_id[1]["label"].startswith("high income")
    assert by_id[2]["name"] == ""
    pred = pd.read_csv(out / "runs" / "named" / "predictions.csv")
    assert set(pred.loc[pred["segment"] == 1, "segment_name"]) <= {"VIPs"}
    assert set(pred.loc[pred["segment"] == 2, "segment_name"]) <= {by_id[2]["label"]}
    report = (out / "runs" / "named" / "report.html").read_text()
    assert "<td>VIPs</td>" in report
    # a retrain without --names keeps them on the segments that continue; a born one has none
    mall = pd.read_csv(mall_csv, dtype={"CustomerID": str})
    rng = np.random.default_rng(7)
    new = pd.DataFrame({"CustomerID": [f"N{i:03d}" for i in range(20)], "Genre": "Female",
                        "Age": 30, FEATURES[0]: rng.normal(135, 2, 20).round(),
                        FEATURES[1]: rng.normal(50, 2, 20).round()})  # fmt: skip
    grown = tmp_path / "grown.csv"
    pd.concat([mall, new]).to_csv(grown, index=False)
    assert main(["run", "--input", str(grown), "--run-id", "retrained", *args]) == 0
    second = json.loads((out / "runs" / "retrained" / "metrics.json").read_text())
    assert second["segment_names"] == first["segment_names"]
    assert second["who_moved"]["born"] == [5]
    assert next(s for s in second["segments"] if s["segment"] == 5)["name"] == ""


@pytest.mark.parametrize(("text", "message"), [
    ("0: A\n1: A\n", "two segments share a name"),
    ("x: A\n", "key 'x' is not a segment id"),
    ("0: ''\n", "the name of segment 0 must be 1..80 characters"),
    ("- a\n- b\n", "expected a mapping"),
    ("0: [unclosed\n", "not a YAML or JSON names file"),
])  # fmt: skip
def test_a_bad_names_file_is_refused_before_anything_runs(tmp_path, mall_csv, capsys, text,
                                                          message):  # fmt: skip
    from custseg.cli import main

    names = tmp_path / "names.yaml"
    names.write_text(text)
    rc = main(["run", "--input", str(mall_csv), "--names", str(names), "--out",
               str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and message in err and str(names) in err
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.slow
def test_the_report_reads_at_phone_width_in_chromium(mall_run, tmp_path):
    """At 400 px the page itself never scrolls sideways (wide tables scroll in their own
    box), and the images fit the screen."""
    from pathlib import Path

    from tests.airflow_harness import CHROMIUM, Stack, chromium, wait_for
    from tests.conftest import missing

    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not installed (.ci/run installs it: apt-get install chromium)")
    run_dir, _, _ = mall_run
    with Stack() as stack, chromium(stack, tmp_path) as browser:
        browser.send("Emulation.setDeviceMetricsOverride", width=400, height=800,
                     deviceScaleFactor=1, mobile=True)  # fmt: skip
        browser.navigate((run_dir / "report.html").as_uri())
        wait_for("the report to render", lambda: "Every column by segment" in browser.text(),
                 timeout=60, interval=0.5, stack=stack)  # fmt: skip
        page = browser.evaluate(
            "({page: document.documentElement.scrollWidth, screen: window.innerWidth,"
            " img: Math.max(...[...document.images].map(i => i.getBoundingClientRect().width)),"
            " boxes: document.querySelectorAll('div.scroll').length})"
        )
        browser.screenshot(tmp_path / "phone.png")
    assert page["screen"] == 400 and page["page"] <= page["screen"], page
    assert page["img"] <= page["screen"] and page["boxes"] >= 3, page


def test_a_category_columns_agreement_is_scikit_learns_adjusted_rand():
    """The profile's agreement of a category column with the segments is the adjusted Rand
    index over the rows where the column is given (computed in NumPy)."""
    from sklearn.metrics import adjusted_rand_score

    from custseg.report import column_profiles

    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, 3000)
    values = np.where(rng.random(3000) < 0.7, np.array(["a", "b", "c", "d"])[labels],
                      rng.choice(["a", "b", "c"], 3000)).astype(object)  # fmt: skip
    values[rng.random(3000) < 0.1] = None
    rows = column_profiles(pd.DataFrame({"kind": values}), labels, 4, {})
    ari = next(r for r in rows if r["statistic"] == "agreement with the segments (ARI)")
    given = pd.notna(values)
    expected = adjusted_rand_score(values[given].astype(str), labels[given])
    assert 0.3 < expected < 0.9 and ari["all"] == round(expected, 3)
