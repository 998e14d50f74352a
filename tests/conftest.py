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


@pytest.fixture(scope="session")
def mall_csv() -> Path:
    """The canonical 200-row Mall Customers file from ../shared (skips if absent)."""
    path = SHARED_DATA / "Mall_Customers.csv"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared Mall Customers data is not beside the repo")
    return path


@pytest.fixture(scope="session")
def messy_csv() -> Path:
    """The 812-row messy variant (duplicates, '?' for missing) from ../shared."""
    path = SHARED_DATA / "Mall_Customers_messy.csv"
    if not path.exists():
        pytest.skip(f"{path} not found: the shared Mall Customers data is not beside the repo")
    return path


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
