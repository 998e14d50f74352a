"""What a person reads in the task logs of `airflow dags test` on the Mall data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dags.conftest import ROOT

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def test_the_model_task_log_is_short_and_ends_with_the_segment_table(tmp_path, mall_csv):
    home, art = tmp_path / "airflow", tmp_path / "art"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CUSTSEG_HOME": str(ROOT),
        "CUSTSEG_ARTIFACTS_ROOT": str(art),
        "CUSTSEG_ALLOWED_ROOTS": os.pathsep.join([str(mall_csv.parent), str(art)]),
    })  # fmt: skip
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    res = subprocess.run(
        [airflow, "dags", "test", "customer_segmentation", "-c",
         f'{{"input_path": "{mall_csv}", "test_path": null}}'],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if "starting task_id=load_model_task" in ln)
    end = next(i for i, ln in enumerate(lines) if "end task task_id=load_model_task" in ln)
    task_log = lines[start : end + 1]
    assert len(task_log) < 150, len(task_log)
    assert not any("DeprecatedImportWarning" in ln or "FutureWarning" in ln for ln in lines)
    text = "\n".join(task_log)
    assert "in words: 5 segments." in text
    for seg in range(5):
        assert re.search(rf"segment {seg}: \d+ customers \(\d+\.\d%\), \w", text), seg
    assert "every check of the promotion gate passed" in text
