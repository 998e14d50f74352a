"""Categorical features (Gender): detected or named, one-hot encoded inside the saved model,
profiled as shares, and new customers with a value never seen scored and flagged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from custseg.cli import main
from custseg.errors import InputError, UntrustedModelError
from custseg.io import UNSEEN, load_customers
from custseg.model import load_model, model_info
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline

MALL_GENDER = ("Gender", "Annual Income (k$)", "Spending Score (1-100)")


def mixed_customers(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """Three segments: numbers that overlap heavily, a channel column that tells them apart."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    centers = np.array([[40.0, 50.0], [46.0, 50.0], [43.0, 56.0]])
    numbers = centers[truth] + rng.normal(0, 6.0, (n, 2))
    channels = np.array(["store", "web", "phone"])
    dominant = rng.random(n) < 0.9
    channel = np.where(dominant, channels[truth], channels[rng.integers(0, 3, n)])
    return pd.DataFrame({"customer_id": [f"c{i:04d}" for i in range(n)], "channel": channel,
                         "spend": numbers[:, 0].round(1), "visits": numbers[:, 1].round(1),
                         "truth": truth})  # fmt: skip


def test_a_text_column_with_few_values_is_read_as_categories(mall_csv, tmp_path):
    table = load_customers(str(mall_csv), features=MALL_GENDER)
    assert table.categories == {"Genre": ("Female", "Male")}
    raw = pd.read_csv(mall_csv)
    np.testing.assert_array_equal(table.frame["Genre"], (raw["Genre"] == "Male").astype(float))
    # a numeric column named as categorical is read as its values' text
    path = tmp_path / "region.csv"
    path.write_text("id,region,spend\n1,3,10\n2,1,12\n3,3,40\n4, 2 ,41\n5,,9\n")
    table = load_customers(str(path), features=("region", "spend"), categorical=["Region"])
    assert table.categories == {"region": ("1", "2", "3")}
    np.testing.assert_array_equal(table.frame["region"], [2.0, 0.0, 2.0, 1.0, np.nan])


def test_too_many_categories_or_an_unknown_name_fail_with_one_line(mall_csv):
    with pytest.raises(InputError, match=r"categorical column 'Age' has 51 distinct values "
                       r"\(at most 20\); group its rare values"):  # fmt: skip
        load_customers(str(mall_csv), features=("Age", "Spending Score (1-100)"),
                       categorical=["age"])  # fmt: skip
    with pytest.raises(InputError, match=r"categorical column 'Genre' is not among the features"):
        load_customers(str(mall_csv), features=("Age", "Spending Score (1-100)"),
                       categorical=["Genre"])  # fmt: skip


def test_categories_alone_are_refused_with_one_line(mall_csv, tmp_path, capsys):
    rc = main(["run", "--input", str(mall_csv), "--features", "Gender", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "every feature is categorical (['Genre']); K-Means needs at least one numeric" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_category_that_tells_segments_apart_is_used(tmp_path):
    data = mixed_customers()
    path = tmp_path / "mixed.csv"
    data.drop(columns="truth").to_csv(path, index=False)
    scores = {}
    for name, features in (("numbers", ("spend", "visits")),
                           ("mixed", ("channel", "spend", "visits"))):  # fmt: skip
        # the category carries the segments here: weighted above the default (see README)
        config = PipelineConfig(features=features, k_min=3, k_max=3, category_weight=0.3)
        summary = run_pipeline(config, input_path=str(path), out=str(tmp_path / name))
        got = pd.read_parquet(Path(summary["run_dir"]) / "assignments.parquet")
        scores[name] = adjusted_rand_score(data["truth"], got["segment"])
    assert scores["mixed"] > 0.6 > scores["numbers"], scores
    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    assert metrics["categories"] == {"channel": ["phone", "store", "web"]}
    shares = {s["segment"]: s for s in metrics["segments"]}
    for seg in shares.values():  # each segment is mostly one channel, and its label says so
        top = max(("phone", "store", "web"), key=lambda c: seg[f"share channel={c}"])
        assert seg[f"share channel={top}"] > 0.7 and f"mostly {top} (channel, " in seg["label"]
        assert sum(seg[f"share channel={c}"] for c in ("phone", "store", "web")) == pytest.approx(
            1, abs=1e-3
        )
    info = model_info(load_model(str(Path(summary["run_dir"]) / "model.skops")))
    assert info.categories == {"channel": ("phone", "store", "web")}
    np.testing.assert_allclose(info.shares["channel"].sum(axis=1), 1.0, atol=1e-9)


def test_unseen_categories_are_scored_and_flagged(mall_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--input", str(mall_csv), "--features", *MALL_GENDER,
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    new = tmp_path / "new.csv"
    new.write_text("CustomerID,Gender,Annual Income (k$),Spending Score (1-100)\n"
                   "n1,Female,20,80\nn2,Other,20,80\nn3,,20,80\nn4,Male,120,10\n")  # fmt: skip
    assert main(["score", "--model", str(out), "--input", str(new), "--out",
                 str(tmp_path / "scores")]) == 0  # fmt: skip
    scored = pd.read_csv(tmp_path / "scores" / "predictions.csv", encoding="utf-8-sig",
                         keep_default_na=False).set_index("CustomerID")  # fmt: skip
    # named as the new file names the column
    assert scored.loc["n2", "unseen_category"] == "Gender"
    assert scored.loc["n1", "unseen_category"] == ""
    assert scored.loc["n2", "segment"] != "" and scored.loc["n3", "segment"] == ""
    assert scored.loc["n2", "Gender"] == "Other"  # the value as written, not a code
    # an unseen value is encoded as no category: the distance is what the numbers give
    model = load_model(str(Path(json.loads((out / "latest.json").read_text())["run_dir"])
                           / "model.skops"))  # fmt: skip
    frame = pd.DataFrame({"Genre": ["Other", "Female"], "Annual Income (k$)": [20.0, 20.0],
                          "Spending Score (1-100)": [80.0, 80.0]})  # fmt: skip
    encoded = model[0].transform(frame)
    assert (encoded[0, 2:] == 0).all() and encoded[1, 2:].sum() > 0
    assert main(["predict", "--model", str(out), "--input", str(new), "--out",
                 str(tmp_path / "p.csv")]) == 0  # fmt: skip
    pred = pd.read_csv(tmp_path / "p.csv", encoding="utf-8-sig",
                       keep_default_na=False).set_index("CustomerID")  # fmt: skip
    assert pred.loc["n2", "unseen_category"] == "Gender" and pred.loc["n2", "out_of_range"] == ""


def test_the_encoder_is_trusted_and_a_crafted_model_still_refused(mall_csv, tmp_path):
    import skops.io as sio
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler, TargetEncoder

    out = tmp_path / "out"
    summary = run_pipeline(PipelineConfig(features=MALL_GENDER, k_max=4), input_path=str(mall_csv),
                           out=str(out))  # fmt: skip
    model = load_model(str(Path(summary["run_dir"]) / "model.skops"))
    assert type(model[0]).__name__ == "ColumnTransformer"
    raw = pd.read_csv(mall_csv).rename(columns={"Gender": "Genre"})
    frame = raw[["Genre", "Annual Income (k$)", "Spending Score (1-100)"]]
    y = (raw["Age"] > 40).astype(int)
    crafted = Pipeline([
        ("scaler", ColumnTransformer([("num", MinMaxScaler(), ["Annual Income (k$)"]),
                                      ("cat", TargetEncoder(), ["Genre"])])),
        ("kmeans", KMeans(2, n_init=1, random_state=0)),
    ]).fit(frame, y)  # fmt: skip
    (tmp_path / "m.skops").write_bytes(sio.dumps(crafted))
    with pytest.raises(UntrustedModelError, match="TargetEncoder"):
        load_model(str(tmp_path / "m.skops"))


def test_http_scoring_takes_category_values(mall_csv, tmp_path):
    from custseg.serve import RequestError, load_served, parse_records, score

    out = tmp_path / "out"
    run_pipeline(PipelineConfig(features=MALL_GENDER, k_max=4), input_path=str(mall_csv),
                 out=str(out), force_promote=True)  # fmt: skip
    served = load_served(str(out))
    body = json.dumps([{"Gender": "Male", "Annual Income (k$)": 20, "Spending Score (1-100)": 80},
                       {"Gender": "Other", "Annual Income (k$)": 20,
                        "Spending Score (1-100)": 80}]).encode()  # fmt: skip
    X = parse_records(body, served.features, max_records=10, categories=served.categories)
    assert X[0, 0] == 1.0 and X[1, 0] == UNSEEN
    got = score(served, X)
    assert got[0]["unseen_category"] == [] and got[1]["unseen_category"] == ["Genre"]
    bad = json.dumps({"Gender": 1.5, "Annual Income (k$)": 1, "Spending Score (1-100)": 1})
    with pytest.raises(RequestError, match=r"'Gender' must be one of its values \['Female', "):
        parse_records(bad.encode(), served.features, max_records=10, categories=served.categories)


def test_on_mall_gender_at_the_default_weight_keeps_the_five_segments(mall_csv, tmp_path):
    """The known result: Gender barely separates Mall customers. At the default weight it
    neither splits the five segments by gender nor changes them; at 0.5 it would."""
    numbers = run_pipeline(PipelineConfig(), input_path=str(mall_csv), out=str(tmp_path / "n"))
    mixed = run_pipeline(PipelineConfig(features=MALL_GENDER), input_path=str(mall_csv),
                         out=str(tmp_path / "m"))  # fmt: skip
    assert numbers["chosen_k"] == mixed["chosen_k"] == 5
    a, b = (pd.read_parquet(Path(s["run_dir"]) / "assignments.parquet") for s in (numbers, mixed))
    assert adjusted_rand_score(a["segment"], b["segment"]) > 0.9
    metrics = json.loads((Path(mixed["run_dir"]) / "metrics.json").read_text())
    assert metrics["category_weight"] == 0.15
    assert metrics["categorical_how"] == {"Genre": "detected: text with 2 distinct values"}
    female = sorted(s["share Genre=Female"] for s in metrics["segments"])
    assert 0.3 < female[0] and female[-1] < 0.8  # no segment of one gender


def test_choosing_k_on_mixed_data_finds_structure_and_its_absence(tmp_path):
    """The tendency test runs on the numbers (a category always looks clustered, and dilutes
    the gap): uniform numbers with a random category are one group; the mixed segments of
    `mixed_customers` are found at their k."""
    rng = np.random.default_rng(3)
    noise = pd.DataFrame({"customer_id": range(500), "spend": rng.uniform(0, 100, 500).round(1),
                          "visits": rng.uniform(0, 50, 500).round(1),
                          "channel": rng.choice(["store", "web", "phone"], 500)})  # fmt: skip
    noise.to_csv(tmp_path / "noise.csv", index=False)
    config = PipelineConfig(features=("channel", "spend", "visits"), k_max=10)
    summary = run_pipeline(config, input_path=str(tmp_path / "noise.csv"), out=str(tmp_path / "n"),
                           force_promote=True)  # fmt: skip
    metrics = json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())
    assert summary["chosen_k"] == 1 and metrics["selection"]["hopkins_columns"] == "numeric"
    data = mixed_customers(seed=1)
    data.drop(columns="truth").to_csv(tmp_path / "mixed.csv", index=False)
    config = PipelineConfig(features=("channel", "spend", "visits"), k_max=10, category_weight=0.3)
    summary = run_pipeline(config, input_path=str(tmp_path / "mixed.csv"), out=str(tmp_path / "m"),
                           force_promote=True)  # fmt: skip
    assert summary["chosen_k"] == 3
