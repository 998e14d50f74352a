"""Apache Airflow 3 DAG `customer_segmentation`: a thin shell over the custseg library.

Parsing this file only builds the DAG (no I/O, no pandas/sklearn); every task body is one
call into `custseg.orchestration`, which imports the heavy libraries inside the task.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import Asset, Param, dag, task

from custseg.options import dag_params
from custseg.orchestration import (
    SAMPLE_INPUT,
    SAMPLE_TEST,
    default_artifacts_root,
    latest_uri,
    project_home,
)

HOME = project_home(Path(__file__).parent)
MODEL_ASSET = Asset(
    name="customer_segmentation_model",
    uri=latest_uri(default_artifacts_root(HOME)),
    group="model",
)
PARAMS = dag_params(
    {"input_path": SAMPLE_INPUT, "test_path": SAMPLE_TEST,
     "artifacts_root": default_artifacts_root(HOME)}
)  # fmt: skip

DOC_MD = """
# Customer segmentation

Segments customers by the chosen features (numbers; text columns with few values one-hot
encoded as categories) with K-Means: a sweep over k, k chosen by
`select` (`auto`: silhouette, Calinski-Harabasz, Davies-Bouldin, gap and BIC vote, checked
on resamples; `elbow`: the knee of the SSE curve), the final model fit at that k on every row.
The pipeline is one list of steps (`custseg.pipeline.STEPS`); this DAG runs one task per step:

1. **load_data_task** - validates the params (every key of the trigger conf must be an
   option; `k_min <= k_max`; paths inside the allowed roots), loads the input table, then
   creates the run directory `ARTIFACTS/runs/<run_id>/` named after this Airflow run. With
   `transactions_path` (an order log) it first builds one row per customer (recency,
   frequency, monetary value, classic RFM scores and segments) under `ARTIFACTS/features/`
   and segments that table, log1p-transformed inside the model (`transform`).
2. **data_preprocessing_task** - drops and counts unusable rows (missing, non-numeric,
   duplicate, conflicting ids).
3. **plan_sweep_task** - the ks to sweep (k_max clamped to the distinct customers), split
   into `sweep_batches` batches.
4. **sweep_k_task** (mapped) - SSE and criteria for each k of one batch.
5. **build_save_model_task** - chooses k and fits the final model at that k on every row.
6. **align_segments_task** - keeps the segment ids of the run that was promoted when this
   run started (recorded then); saves the model and the assignments.
7. **profile_segments_task** - each segment's size, share, centroid, means and label.
8. **load_model_task** - reloads the saved model, scores the test customers, writes
   `metrics.json` and `report.html`, and only then replaces `ARTIFACTS/latest.json`; it emits
   the `customer_segmentation_model` asset event with the run's model path in `extra`.

Tasks hand each other the run directory through XCom; tables and models move as files. Bad
input fails the task at once with a one-line message naming the param, and its run
directory is removed; other errors are retried. Relative paths are resolved against the
project directory (`CUSTSEG_HOME`).
"""

# Mapped tasks do not pick up their docstring as doc_md, so it is given explicitly.
SWEEP_DOC = """**Sweep one batch of k.** Fits K-Means for each k of the batch on the scaled
sample and writes `{k, sse, criteria}` points to the run directory."""


@dag(
    dag_id="customer_segmentation",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=4,
    tags=["custseg", "ml", "kmeans"],
    doc_md=DOC_MD,
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(seconds=10),
        "execution_timeout": dt.timedelta(hours=1),
    },
    params={name: Param(**spec) for name, spec in PARAMS.items()},
)
def customer_segmentation():
    @task
    def load_data_task(params=None, run_id=None, ti=None, dag_run=None):
        """**Load and validate.** Checks the params, loads the input table and creates the
        run directory named after the run id. Bad input fails here at once, without
        retries, and creates nothing."""
        from custseg.orchestration import load_task

        return load_task(params, run_id=run_id, home=HOME, try_number=ti.try_number,
                         conf=dag_run.conf, dag_id=dag_run.dag_id)  # fmt: skip

    @task
    def data_preprocessing_task(loaded):
        """**Preprocess.** Drops and counts rows with missing, non-numeric or infinite
        features, exact duplicates and conflicting customer ids."""
        from custseg.orchestration import preprocess_task

        return preprocess_task(loaded["run_dir"])

    @task
    def plan_sweep_task(prepared, params=None):
        """**Plan the k sweep.** The ks to sweep, split into `sweep_batches` batches, one
        mapped `sweep_k_task` each."""
        from custseg.orchestration import plan_task

        return plan_task(prepared["run_dir"], batches=params["sweep_batches"])

    @task(map_index_template="k={{ ks[0] }}..{{ ks[-1] }}", doc_md=SWEEP_DOC)
    def sweep_k_task(run_dir, ks):
        """**Sweep one batch of k.**"""
        from custseg.orchestration import sweep_task

        return sweep_task(run_dir, ks)

    @task
    def build_save_model_task(prepared, swept):
        """**Choose k and fit.** Merges the sweep batches, chooses k and fits the final
        model at that k on every row; writes the elbow and selection plots."""
        from custseg.orchestration import fit_task

        return fit_task(prepared["run_dir"])

    @task
    def align_segments_task(fitted):
        """**Align segment ids.** Renumbers the segments so that those matching the run
        promoted when this run started keep their ids; saves the model (skops) and the
        assignments."""
        from custseg.orchestration import align_task

        return align_task(fitted["run_dir"])

    @task
    def profile_segments_task(aligned):
        """**Profile.** Each segment's size, share, centroid, means and label; the segment
        scatter plot. The task log ends with the segment table."""
        from custseg.orchestration import profile_task

        return profile_task(aligned["run_dir"])

    @task(outlets=[MODEL_ASSET])
    def load_model_task(profiled, outlet_events=None):
        """**Load, predict, promote.** Reloads the saved model, scores the test customers,
        writes `metrics.json` and `report.html`, then replaces `latest.json` (only here) and
        emits the model asset event."""
        from custseg.orchestration import finish_task

        summary = finish_task(profiled["run_dir"])
        outlet_events[MODEL_ASSET].extra = {
            "run_id": summary["run_id"],
            "model": summary["model"],
            "chosen_k": summary["chosen_k"],
        }
        return summary

    loaded = load_data_task()
    prepared = data_preprocessing_task(loaded)
    plan = plan_sweep_task(prepared)
    swept = sweep_k_task.expand_kwargs(plan)
    fitted = build_save_model_task(prepared, swept)
    load_model_task(profile_segments_task(align_segments_task(fitted)))


customer_segmentation()
