"""Params -> config, path confinement and error mapping used by the Airflow DAG."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from custseg.errors import InputError
from custseg.orchestration import (
    allowed_roots,
    confine_path,
    fail_fast_on_input_errors,
    request_from_params,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def roots_env(monkeypatch, tmp_path):
    home = tmp_path / "proj"
    (home / "data").mkdir(parents=True)
    art = tmp_path / "art"
    monkeypatch.delenv("CUSTSEG_ALLOWED_ROOTS", raising=False)
    monkeypatch.setenv("CUSTSEG_ARTIFACTS_ROOT", str(art))
    return home, art


def test_default_roots_are_the_data_dir_and_the_artifacts_root(roots_env):
    """Not the project directory: it may hold AIRFLOW_HOME (`make run`'s .airflow/)."""
    home, art = roots_env
    assert allowed_roots(home) == (str((home / "data").resolve()), str(art.resolve()))


def test_roots_come_from_the_environment(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", f"{a}{os.pathsep}{b}{os.pathsep}")
    assert allowed_roots(tmp_path / "home") == (str(a), str(b))


def test_relative_paths_resolve_against_the_project(roots_env):
    home, _ = roots_env
    roots = allowed_roots(home)
    got = confine_path("data/x.csv", roots=roots, home=home, what="input_path")
    assert got == str((home / "data" / "x.csv").resolve())
    assert confine_path(f"file://{home}/data/x.csv", roots=roots, home=home, what="i") == got


@pytest.mark.parametrize("bad", ["../secret.csv", "data/../../secret.csv", "/etc/passwd"])
def test_escapes_and_outside_paths_are_rejected_naming_path_and_roots(roots_env, bad):
    home, art = roots_env
    roots = allowed_roots(home)
    with pytest.raises(InputError) as err:
        confine_path(bad, roots=roots, home=home, what="input_path")
    msg = str(err.value)
    assert f"input_path {bad!r}" in msg and "outside the allowed roots" in msg
    assert str(home.resolve()) in msg and str(art.resolve()) in msg
    assert "CUSTSEG_ALLOWED_ROOTS" in msg and "\n" not in msg


def test_a_symlink_out_of_a_root_is_rejected(roots_env, tmp_path):
    home, _ = roots_env
    outside = tmp_path / "outside.csv"
    outside.write_text("a,b\n1,2\n")
    (home / "data" / "link.csv").symlink_to(outside)
    with pytest.raises(InputError, match="outside the allowed roots"):
        confine_path("data/link.csv", roots=allowed_roots(home), home=home, what="input_path")


def test_a_sibling_with_a_common_prefix_is_not_inside(roots_env, tmp_path):
    home, _ = roots_env
    sibling = Path(str(home) + "-evil") / "x.csv"
    with pytest.raises(InputError):
        confine_path(str(sibling), roots=allowed_roots(home), home=home, what="test_path")


def test_uris_need_a_uri_root(monkeypatch, tmp_path):
    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", "s3://bucket/seg")
    roots = allowed_roots(tmp_path)
    assert confine_path("s3://bucket/seg/in.csv", roots=roots, home=tmp_path, what="i") == (
        "s3://bucket/seg/in.csv"
    )
    for bad in ("s3://bucket/seg/../other/in.csv", "s3://bucket/segx/in.csv", "gs://b/in.csv"):
        with pytest.raises(InputError, match="outside the allowed roots"):
            confine_path(bad, roots=roots, home=tmp_path, what="input_path")


@pytest.mark.parametrize("root", ["s3://my-bucket/custseg", "s3://my-bucket/custseg/"])
@pytest.mark.parametrize("given", ["s3://my-bucket/custseg", "s3://my-bucket/custseg/"])
def test_an_s3_root_matches_itself(monkeypatch, tmp_path, root, given):
    """The documented S3 deployment sets the artifacts root to the allowed root itself; it
    was refused as 'outside the allowed roots [..., s3://my-bucket/custseg/]'."""
    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", root)
    roots = allowed_roots(tmp_path)
    assert confine_path(given, roots=roots, home=tmp_path, what="artifacts_root") == (
        "s3://my-bucket/custseg"
    )


def test_params_become_a_validated_request(roots_env):
    home, art = roots_env
    req = request_from_params(
        {"input_path": "data/in.csv", "test_path": None, "features": ["a", "b"], "k_min": 2,
         "k_max": 7, "scaler": "standard", "select": "elbow", "seed": 3, "n_init": 4,
         "sample_size": 500, "artifacts_root": str(art), "sweep_batches": 4},
        home=home,
    )  # fmt: skip
    assert req.config.features == ("a", "b") and (req.config.k_min, req.config.k_max) == (2, 7)
    assert req.config.scaler == "standard" and req.config.seed == 3
    assert (req.config.select, req.config.n_init, req.config.sample_size) == ("elbow", 4, 500)
    assert req.test_path is None and req.sweep_batches == 4
    assert req.input_path == str((home / "data" / "in.csv").resolve())
    assert req.artifacts_root == str(art.resolve())


def test_k_min_above_k_max_is_a_clear_input_error(roots_env):
    home, _ = roots_env
    with pytest.raises(InputError, match=r"k_min=9 > k_max=3: lower k_min or raise k_max"):
        request_from_params({"k_min": 9, "k_max": 3}, home=home)


@pytest.mark.parametrize(
    ("conf", "words"),
    [({"kmax": 5}, "unknown option 'kmax': did you mean k_max?"),
     ({"selection": "elbow"}, "unknown option 'selection': did you mean select?"),
     ({"k-min": 2}, "unknown option 'k-min': did you mean k_min?"),
     ({"zzz": 1}, "unknown option 'zzz': valid keys: input_path, transactions_path, "
                  "customer_column")],
)  # fmt: skip
def test_an_unknown_trigger_key_fails_naming_the_closest_option(roots_env, conf, words):
    """A misspelt conf key used to be ignored silently (`kmax` swept 1..50)."""
    home, _ = roots_env
    with pytest.raises(InputError) as err:
        request_from_params({**conf}, home=home, conf=conf)
    assert str(err.value).startswith(words)


@pytest.mark.parametrize(
    ("params", "words"),
    [({"sweep_batches": 0}, "sweep_batches=0"), ({"seed": "x"}, "seed='x'"),
     ({"scaler": "log"}, "scaler='log' is not one of"),
     ({"k_max": 201}, "k_max=201 must be <= 200"),
     ({"artifacts_root": "/"}, "artifacts_root")],
)  # fmt: skip
def test_other_bad_params(roots_env, params, words):
    home, _ = roots_env
    with pytest.raises(InputError) as err:
        request_from_params(params, home=home)
    assert words in str(err.value)


def test_input_errors_fail_the_airflow_task_without_retry():
    pytest.importorskip("airflow.sdk")
    from airflow.sdk.exceptions import AirflowFailException

    with pytest.raises(AirflowFailException, match="^bad column 'x'$"):
        with fail_fast_on_input_errors():
            raise InputError("bad column 'x'")
    with pytest.raises(OSError):  # anything else stays retryable
        with fail_fast_on_input_errors():
            raise OSError("disk full")


def test_airflow_failures_name_the_param_not_the_cli_flag(monkeypatch, tmp_path):
    """In Airflow, "pass --input" / "choose other --features" read as the params' names."""
    pytest.importorskip("airflow.sdk")
    from airflow.sdk.exceptions import AirflowFailException

    from custseg.orchestration import load_task

    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", f"{ROOT}{os.pathsep}{tmp_path}")
    with pytest.raises(AirflowFailException) as err:
        load_task({"input_path": str(tmp_path / "missing.csv"),
                   "artifacts_root": str(tmp_path)}, run_id="r", home=ROOT)  # fmt: skip
    assert str(err.value).endswith("check the path (cwd-relative) or pass input_path")
    bad = tmp_path / "words.csv"
    bad.write_text("CustomerID,Annual Income (k$),Spending Score (1-100)\n"
                   + "".join(f"{i},{i},x{i}\n" for i in range(20)))  # fmt: skip
    with pytest.raises(AirflowFailException) as err:
        load_task({"input_path": str(bad), "artifacts_root": str(tmp_path)}, run_id="r2",
                  home=ROOT)  # fmt: skip
    assert "--" not in str(err.value) and "features" in str(err.value)


def test_load_task_names_the_run_dir_after_the_run_id_and_the_try(monkeypatch, tmp_path):
    from custseg.orchestration import load_task

    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", f"{ROOT}{os.pathsep}{tmp_path}")
    params = {"input_path": "data/sample/customers.csv", "artifacts_root": str(tmp_path)}
    first = load_task(params, run_id="manual__2026-11-28T21:00:00+00:00", home=ROOT)
    assert first["run_dir"] == str(tmp_path / "runs" / "manual__2026-11-28T21_00_00_00_00")
    assert first["n_rows_read"] == 400 and first["sweep_batches"] == 1
    # a retry never reuses what the failed attempt left behind
    again = load_task(params, run_id="manual__2026-11-28T21:00:00+00:00", home=ROOT,
                      try_number=2)  # fmt: skip
    assert again["run_dir"] == first["run_dir"] + "-try2"
    assert (tmp_path / "runs" / "manual__2026-11-28T21_00_00_00_00-try2" / "work").is_dir()


def test_bad_input_creates_no_run_directory(monkeypatch, tmp_path):
    """Validation (options, then the input file) passes before the run directory exists:
    four mistakes used to leave four empty run directories."""
    from custseg.orchestration import load_task

    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", f"{ROOT}{os.pathsep}{tmp_path}")
    bad = tmp_path / "bad.csv"
    bad.write_text("CustomerID,Age\n1,20\n")
    for params in (
        {"input_path": str(bad)},
        {"k_min": 9, "k_max": 3},
        {"input_path": str(tmp_path / "missing.csv")},
        {"scaler": "log"},
    ):
        with pytest.raises(Exception, match="Spending|k_min=9|not found|scaler"):
            load_task({**params, "artifacts_root": str(tmp_path / "art")}, run_id="r", home=ROOT)
    assert not (tmp_path / "art" / "runs").exists() or not any(
        (tmp_path / "art" / "runs").iterdir()
    )


@pytest.mark.parametrize(
    ("root", "uri"),
    [
        ("s3://bucket/custseg/", "s3://bucket/custseg/latest.json"),
        ("memory://art", "memory://art/latest.json"),
        ("/srv/artifacts", "file:///srv/artifacts/latest.json"),
        ("file:///srv/artifacts", "file:///srv/artifacts/latest.json"),
    ],
)
def test_model_asset_uri_follows_the_artifacts_root(root, uri):
    from custseg.orchestration import latest_uri

    assert latest_uri(root) == uri
