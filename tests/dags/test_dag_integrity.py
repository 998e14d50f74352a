"""The DAG parses cleanly, fast, with the seed's task ids in order and valid param defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.dags.conftest import ROOT  # noqa: F401 - one definition of the project root

TASKS = ["load_data_task", "data_preprocessing_task", "build_save_model_task", "load_model_task"]
HEAVY = ("pandas", "numpy", "sklearn", "pyarrow", "matplotlib", "skops", "kneed",
         "custseg.pipeline")  # fmt: skip


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dags_folder_parses_without_import_errors(bag):
    assert bag.import_errors == {}
    assert sorted(bag.dags) == ["customer_segmentation", "score_customers", "watch_inbox"]


def test_score_customers_runs_on_the_new_customers_asset_and_can_retrain(bag):
    dag = bag.dags["score_customers"]
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["custseg_new_customers"]
    assert [t.task_id for t in dag.topological_sort()] == [
        "score_new_customers_task", "drift_is_significant_task", "retrain_task"]  # fmt: skip
    assert dag.get_task("retrain_task").trigger_dag_id == "customer_segmentation"
    watch = bag.dags["watch_inbox"]
    outlets = watch.get_task("announce_customers_task").outlets
    assert [a.name for a in outlets] == ["custseg_new_customers"]
    assert watch.get_task("wait_for_customers_task").mode == "reschedule"


def test_one_task_per_step_of_the_pipeline(bag):
    """The DAG is a runner of `custseg.pipeline.STEPS`: a task per step, in step order, but
    for consecutive steps that share one (choosing k and the final fit)."""
    from itertools import groupby

    from custseg.pipeline import STEPS

    dag = bag.dags["customer_segmentation"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == [task_id for task_id, _ in groupby(s.task_id for s in STEPS)]
    shared = [s.name for s in STEPS if s.task_id == "build_save_model_task"]
    assert shared == ["selection", "fitted"]


def test_seed_task_ids_run_in_order_with_the_mapped_sweep_between(bag):
    dag = bag.dags["customer_segmentation"]
    order = [t.task_id for t in dag.topological_sort()]
    assert [t for t in order if t in TASKS] == TASKS
    assert dag.task_dict["load_data_task"].downstream_task_ids == {"data_preprocessing_task"}
    assert dag.task_dict["data_preprocessing_task"].downstream_task_ids == {
        "plan_sweep_task", "build_save_model_task"}  # fmt: skip
    assert dag.task_dict["plan_sweep_task"].downstream_task_ids == {"sweep_k_task"}
    assert dag.task_dict["sweep_k_task"].downstream_task_ids == {"build_save_model_task"}
    assert dag.task_dict["build_save_model_task"].downstream_task_ids == {"align_segments_task"}
    assert dag.task_dict["align_segments_task"].downstream_task_ids == {"profile_segments_task"}
    assert dag.task_dict["profile_segments_task"].downstream_task_ids == {"load_model_task"}
    assert dag.task_dict["load_model_task"].downstream_task_ids == set()
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    assert isinstance(dag.task_dict["sweep_k_task"], MappedOperator)


def test_dag_settings_and_docs(bag):
    dag = bag.dags["customer_segmentation"]
    assert dag.schedule is None and dag.catchup is False and "custseg" in dag.tags
    assert "load_data_task" in dag.doc_md and "latest.json" in dag.doc_md
    for task in dag.tasks:
        assert task.retries == 2, task.task_id  # as the README says
        assert task.doc_md and task.doc_md.lstrip().startswith("**"), task.task_id
    outlets = dag.task_dict["load_model_task"].outlets
    assert [a.name for a in outlets] == ["customer_segmentation_model"]


def test_param_defaults_are_valid_and_point_at_the_bundled_sample(bag):
    from custseg.options import SELECTIONS, PipelineConfig
    from custseg.orchestration import request_from_params

    dag = bag.dags["customer_segmentation"]
    params = dag.params.validate()  # raises ParamValidationError on a bad default
    assert params["k_min"] == 1 and params["k_max"] == 50 and params["sweep_batches"] == 1
    assert params["select"] == PipelineConfig().select
    assert dag.params.get_param("select").schema["enum"] == list(SELECTIONS)
    for name, param in dag.params.items():
        schema = param.schema
        assert schema.get("type") and schema.get("title") and schema.get("section"), name
        assert param.description, name
    req = request_from_params(params, home=ROOT)
    assert req.input_path == str(ROOT / "data" / "sample" / "customers.csv")
    assert req.test_path == str(ROOT / "data" / "sample" / "test.csv")


def test_params_are_the_option_spec(bag):
    """Every option the spec gives the DAG is a Param with the spec's default and bounds, and
    every Param is an option: the trigger form and the CLI cannot drift apart again."""
    from custseg.options import DAG, all_options

    dag = bag.dags["customer_segmentation"]
    options = all_options(DAG)
    assert set(dag.params) == set(options)
    assert {"n_init", "sample_size", "select", "k_max"} <= set(dag.params)
    assert dag.params.get_param("k_max").schema["maximum"] == 200
    assert dag.params.get_param("n_init").value == options["n_init"][1] == 10
    assert dag.params.get_param("sample_size").schema["type"] == ["null", "integer"]


def test_bad_param_values_are_rejected_by_the_schema(bag):
    from airflow.sdk.exceptions import ParamValidationError

    dag = bag.dags["customer_segmentation"]
    for bad in ({"k_min": "x"}, {"scaler": "log"}, {"sweep_batches": 0},
                {"sweep_batches": 51}, {"features": []}, {"k_max": 201},
                {"n_init": 0}, {"sample_size": 50}):  # fmt: skip
        name, value = next(iter(bad.items()))
        with pytest.raises(ParamValidationError):
            dag.params.get_param(name).resolve(value)


@pytest.mark.parametrize("dag_file", ["customer_segmentation.py", "score_customers.py"])
def test_parsing_imports_no_heavy_modules(dag_file):
    """Parse cost: importing a DAG file must not pull in pandas, sklearn and friends."""
    code = textwrap.dedent(f"""
        import json, runpy, sys, time
        import airflow.sdk
        start = time.perf_counter()
        runpy.run_path({str(ROOT / "dags" / dag_file)!r})
        took = time.perf_counter() - start
        print(json.dumps({{"heavy": [m for m in {HEAVY!r} if m in sys.modules],
                           "seconds": took}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["heavy"] == []
    print(f"DAG file parse (after airflow.sdk import): {out['seconds']:.3f}s")


def test_dag_file_contains_the_safe_mode_words():
    text = (ROOT / "dags" / "customer_segmentation.py").read_text().lower()
    assert "airflow" in text and "dag" in text
