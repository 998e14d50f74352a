"""Crafted model files are refused with one line before anything large is materialised, and a
model that is not the file its run recorded is refused (built here, never committed)."""

from __future__ import annotations

import io
import json
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest

from custseg.cli import main
from custseg.errors import InputError
from custseg.model import load_model
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline

FAST = PipelineConfig(k_max=6, n_init=2, select="elbow")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_csv):
    out = tmp_path_factory.mktemp("models")
    summary = run_pipeline(FAST, input_path=str(sample_csv), out=str(out), run_id="good")
    return Path(summary["run_dir"])


def _rewrite(model_file: Path, target: Path, *, replace: dict[str, bytes]) -> Path:
    """A copy of a skops archive with some members replaced, deflated (small on disk)."""
    with (
        zipfile.ZipFile(model_file) as src,
        zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, replace.get(info.filename, src.read(info.filename)))
    return target


def _centers_member(model_file: Path) -> str:
    """The .npy member holding cluster_centers_ (the one with k rows of 2 columns)."""
    with zipfile.ZipFile(model_file) as archive:
        for name in archive.namelist():
            if name.endswith(".npy"):
                arr = np.load(io.BytesIO(archive.read(name)))
                if arr.ndim == 2 and arr.shape[1] == 2:
                    return name
    raise AssertionError("no centers array")


def _npy(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(shape))
    return buf.getvalue()


def test_a_huge_declared_centers_array_is_refused_before_loading(trained, tmp_path):
    """4M x 2 centers in a 65 KB file: `predict` used to score everyone into segment 0 at
    6.7 GB RSS; 134M rows ended in SIGSEGV."""
    member = _centers_member(trained / "model.skops")
    crafted = _rewrite(trained / "model.skops", tmp_path / "model.skops",
                       replace={member: _npy((4_000_000, 2))})  # fmt: skip
    assert crafted.stat().st_size < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match=r"declares shape \(4000000, 2\) of float64, over the"):
        load_model(str(crafted))
    # nothing near the declared 64 MB was allocated (ru_maxrss is in KB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 30_000


def test_an_inflating_schema_is_refused(trained, tmp_path):
    """A 1.5 MB file whose schema.json inflates to 1.5 GB was accepted after 34 s at 3.4 GB."""
    schema = json.loads(zipfile.ZipFile(trained / "model.skops").read("schema.json"))
    padded = json.dumps(schema).encode() + b" " * (5 << 20)  # valid JSON, 5 MB of padding
    crafted = _rewrite(trained / "model.skops", tmp_path / "model.skops",
                       replace={"schema.json": padded})  # fmt: skip
    assert crafted.stat().st_size < 100_000
    with pytest.raises(
        InputError, match=r"model schema declares [\d,]+ bytes, over the 4,194,304-byte limit"
    ):
        load_model(str(crafted))


def test_centers_that_disagree_with_the_features_are_refused(trained, tmp_path):
    member = _centers_member(trained / "model.skops")
    crafted = _rewrite(trained / "model.skops", tmp_path / "model.skops",
                       replace={member: _npy((3, 5))})  # fmt: skip
    with pytest.raises(InputError, match=r"model is inconsistent \(k=\d+, centers \(3, 5\)"):
        load_model(str(crafted))


def test_a_swapped_model_file_is_refused_by_predict(trained, tmp_path, sample_csv, capsys):
    """A k=3 model copied over a promoted k=5 run used to score and label with the k=5 run's
    segment names; metrics.json now records the model's SHA-256."""
    other = run_pipeline(
        PipelineConfig(k_min=3, k_max=3, n_init=2, select="elbow"),
        input_path=str(sample_csv),
        out=str(tmp_path / "o"),
        run_id="k3",
    )
    metrics = json.loads((trained / "metrics.json").read_text())
    assert len(metrics["model_sha256"]) == 64
    import hashlib

    assert metrics["model_sha256"] == hashlib.sha256(
        (trained / "model.skops").read_bytes()).hexdigest()  # fmt: skip
    victim = tmp_path / "victim"
    import shutil

    shutil.copytree(trained, victim)
    shutil.copy(Path(other["run_dir"]) / "model.skops", victim / "model.skops")
    rc = main(["predict", "--model", str(victim), "--input", str(sample_csv),
               "--out", str(tmp_path / "p.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "model file does not match its run (SHA-256 differs" in err
    assert not (tmp_path / "p.csv").exists()
