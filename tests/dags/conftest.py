"""Fixtures for the Airflow tests: a migrated metadata DB, the DAG, run helpers.

The Airflow environment itself (temporary AIRFLOW_HOME, dags folder, no examples) is set by
tests/conftest.py before anything imports airflow; here we only add custseg's roots.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TMP_BASE = Path(tempfile.mkdtemp(prefix="custseg-dag-tests-"))
ARTIFACTS = TMP_BASE / "artifacts"

DAG_ENV = {
    # Params may only name paths inside these roots: the project, the shared data beside it
    # (Mall Customers) and this session's temporary directory.
    "CUSTSEG_ALLOWED_ROOTS": os.pathsep.join(
        [str(ROOT), str(ROOT.parent / "shared" / "data"), str(TMP_BASE)]
    ),
    "CUSTSEG_ARTIFACTS_ROOT": str(ARTIFACTS),
    "CUSTSEG_HOME": None,
}


@pytest.fixture(scope="package", autouse=True)
def dag_environment():
    """custseg's roots for the DAG tests only: set when the first test of tests/dags starts,
    restored when the last one ends (the rest of the suite never sees them)."""
    saved = {name: os.environ.get(name) for name in DAG_ENV}
    for name, value in DAG_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_sessionfinish(session, exitstatus):
    """Remove the DAG tests' temporary folder."""
    import shutil

    shutil.rmtree(TMP_BASE, ignore_errors=True)


@pytest.fixture(scope="session")
def tmp_base() -> Path:
    """A temporary directory inside the allowed roots."""
    return TMP_BASE


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the metadata DB in the session's temporary AIRFLOW_HOME (once)."""
    from airflow.utils import db

    db.resetdb()
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def dag(airflow_db):
    """The DAG object, parsed from the dags folder like Airflow does."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["customer_segmentation"]


def read_json(path: Path):
    """JSON content of a file."""
    return json.loads(Path(path).read_text())
