from custseg.select import choose_elbow, elbow_k
from custseg.sweep import SweepResult


def test_elbow_on_a_clear_knee():
    ks = list(range(1, 11))
    sse = [100, 40, 12, 10, 9, 8.5, 8, 7.6, 7.3, 7]
    assert elbow_k(ks, sse) == 3
    sel = choose_elbow(SweepResult(tuple(ks), tuple(sse), 10, 0.0))
    assert sel.chosen_k == 3 and sel.method == "elbow" and "k=3" in sel.reason


def test_no_knee_falls_back_to_k_min_and_says_so(caplog):
    ks = list(range(2, 12))
    sse = [100 - 10 * i for i in range(10)]  # a straight line has no knee
    sel = choose_elbow(SweepResult(tuple(ks), tuple(sse), 10, 0.0))
    assert sel.details["knee"] is None
    assert sel.chosen_k == 2
    assert "returned None" in sel.reason and "k_min=2" in sel.reason
    assert "falling back" in caplog.text


def test_too_few_ks_for_an_elbow():
    sel = choose_elbow(SweepResult((3, 4), (10.0, 5.0), 10, 0.0))
    assert sel.chosen_k == 3 and "too few" in sel.reason


def test_auto_is_the_default_and_elbow_stays_the_missions_kneelocator():
    import numpy as np
    from kneed import KneeLocator

    from custseg.options import PipelineConfig
    from custseg.select import choose_k
    from custseg.sweep import sweep_k

    assert PipelineConfig().select == "auto" and PipelineConfig(select="elbow").select == "elbow"
    X = np.random.default_rng(0).normal(size=(150, 2))
    X[:50] += 6
    sweep = sweep_k(X, range(1, 21), seed=42, n_init=10)
    knee = KneeLocator(list(range(1, 21)), list(sweep.sse), curve="convex",
                       direction="decreasing").knee  # fmt: skip
    sel = choose_k(sweep, method="elbow")
    assert sel.method == "elbow" and sel.chosen_k == knee


def test_auto_run_records_the_decision_and_keeps_segment_ids(tmp_path, mall_csv):
    import json

    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline

    runs = []
    for seed in (3, 11):
        cfg = PipelineConfig(k_max=10, seed=seed)
        runs.append(run_pipeline(cfg, input_path=str(mall_csv), out=str(tmp_path)))
    first, second = (json.loads((tmp_path / "runs" / r["run_id"] / "metrics.json").read_text())
                     for r in runs)  # fmt: skip
    sel = second["selection"]
    assert sel["method"] == "auto" and sel["chosen_k"] == 5
    assert set(sel["values"]) >= {"silhouette", "calinski_harabasz", "davies_bouldin", "gap"}
    assert sel["picks"]["silhouette"] == 5 and sel["confidence"] == "medium"
    # 3 of 5 criteria (bic, davies_bouldin, silhouette) pick 5; every resample agrees
    assert sel["criteria_agreement"] == 0.6 and sel["stability"]["agreement"] == 1.0
    assert (tmp_path / "runs" / runs[1]["run_id"] / "selection.png").stat().st_size > 1000
    html = (tmp_path / "runs" / runs[1]["run_id"] / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert first["segment_alignment"] is None
    al = second["segment_alignment"]
    assert al["aligned"] and al["kept_ids"] == 5
    assert al["previous_run_dir"].endswith(runs[0]["run_id"])
    c1 = {s["segment"]: s["centroid Annual Income (k$)"] for s in first["segments"]}
    c2 = {s["segment"]: s["centroid Annual Income (k$)"] for s in second["segments"]}
    assert all(abs(c1[i] - c2[i]) < 3 for i in c1), (c1, c2)
