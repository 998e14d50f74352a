"""Shared fixtures. Airflow's environment is set here, before anything imports airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "data" / "sample"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="custseg-airflow-home-"))
# Forced, not defaulted: the tests reset this DB, so they must never use a real AIRFLOW_HOME.
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME}/airflow.db"
os.environ.setdefault("MPLBACKEND", "Agg")


IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing(reason: str) -> None:
    """A dataset or service a test needs is missing: skip it with the reason on a developer's
    machine, fail in CI (`CI=true`), where a skip would hide lost coverage."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing dataset or service fails the run)")
    pytest.skip(reason)


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        missing(f"{path} not found: the shared data is not beside the repo (../shared/data)")
    return path


@pytest.fixture(scope="session")
def mall_csv() -> Path:
    """The canonical 200-row Mall Customers file from ../shared."""
    return shared_file("Mall_Customers.csv")


@pytest.fixture(scope="session")
def messy_csv() -> Path:
    """The 812-row messy variant (duplicates, '?' for missing) from ../shared."""
    return shared_file("Mall_Customers_messy.csv")


def pytest_sessionfinish(session, exitstatus):
    """Remove this session's temporary AIRFLOW_HOME (nothing piles up in /tmp)."""
    import shutil

    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    """The bundled synthetic sample."""
    return SAMPLE / "customers.csv"


@pytest.fixture(scope="session")
def sample_test_csv() -> Path:
    """The bundled new customers to score."""
    return SAMPLE / "test.csv"


def write_csv(path: Path, text: str) -> Path:
    """Write a small CSV for a test and return its path."""
    path.write_text(text)
    return path
