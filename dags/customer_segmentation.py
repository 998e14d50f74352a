"""Apache Airflow 3 DAG `customer_segmentation`: a thin shell over the custseg library.

Parsing this file only builds the DAG (no I/O, no pandas/sklearn); every task body is one
call into `custseg.orchestration`, which imports the heavy libraries inside the task.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.sdk import Asset, Param, dag, task

from custseg.config import DEFAULT_FEATURES, SCALERS, SELECTIONS, PipelineConfig
from custseg.orchestration import (
    MAX_SWEEP_BATCHES,
    SAMPLE_INPUT,
    SAMPLE_TEST,
    default_artifacts_root,
    latest_uri,
    project_home,
)

HOME = project_home(Path(__file__).parent)
DEFAULTS = PipelineConfig()
MODEL_ASSET = Asset(
    name="customer_segmentation_model",
    uri=latest_uri(default_artifacts_root(HOME)),
    group="model",
)

DOC_MD = """
# Customer segmentation (K-Means + elbow)

Segments customers by the chosen numeric features with K-Means, as four tasks:

1. **load_data_task** - validates the params (also `k_min <= k_max` and that every path lies
   inside the allowed roots), creates the run directory `ARTIFACTS/runs/<run_id>/` named after
   this Airflow run and loads the input table into it as Parquet.
2. **data_preprocessing_task** - drops and counts unusable rows (missing, non-numeric,
   duplicate, conflicting ids) and writes the feature table.
3. **plan_sweep_task / sweep_k_task / build_save_model_task** - the k sweep fans out as
   `sweep_batches` mapped tasks (each returns `{k, sse}` points); the reduce step chooses k
   from the SSE curve, fits the final model at that k and saves it with skops.
4. **load_model_task** - reloads the saved model, scores the test customers, writes
   `metrics.json` and `report.html`, and only then replaces `ARTIFACTS/latest.json`; it emits
   the `customer_segmentation_model` asset event with the run's model path in `extra`.

Tasks hand each other only run directory paths and small numbers through XCom. Bad input
(missing file or column, `k_min > k_max`, a path outside `CUSTSEG_ALLOWED_ROOTS`) fails the
task at once with a one-line message; other errors are retried. Relative paths are resolved
against the project directory (`CUSTSEG_HOME`).
"""

# Mapped tasks do not pick up their docstring as doc_md, so it is given explicitly.
SWEEP_DOC = """**Sweep one batch of k.** Fits K-Means for each k of the batch on the scaled
features and returns `[{k, sse}]`, every point with its k."""


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
    params={
        "input_path": Param(
            SAMPLE_INPUT,
            type="string",
            minLength=1,
            title="Customer table",
            description="CSV (plain or compressed) or Parquet, inside the allowed roots; "
            "relative to the project directory.",
            section="Data",
        ),
        "test_path": Param(
            SAMPLE_TEST,
            type=["null", "string"],
            title="Test customers",
            description="New customers to assign to segments (same columns); empty for none.",
            section="Data",
        ),
        "features": Param(
            list(DEFAULT_FEATURES),
            type="array",
            items={"type": "string"},
            minItems=1,
            title="Features",
            description="Numeric columns to cluster on (matched case- and "
            "punctuation-insensitively).",
            section="Data",
        ),
        "k_min": Param(
            DEFAULTS.k_min,
            type="integer",
            minimum=1,
            title="Smallest k",
            description="First number of clusters in the sweep.",
            section="Model",
        ),
        "k_max": Param(
            DEFAULTS.k_max,
            type="integer",
            minimum=1,
            maximum=200,
            title="Largest k",
            description="Last number of clusters in the sweep (>= k_min; clamped to the "
            "number of distinct customers).",
            section="Model",
        ),
        "scaler": Param(
            DEFAULTS.scaler,
            type="string",
            enum=list(SCALERS),
            title="Scaler",
            description="Feature scaling inside the saved model.",
            section="Model",
        ),
        "selection": Param(
            DEFAULTS.select,
            type="string",
            enum=list(SELECTIONS),
            title="Selection of k",
            description="Rule that picks k from the SSE curve.",
            section="Model",
        ),
        "seed": Param(
            DEFAULTS.seed,
            type="integer",
            minimum=0,
            title="Random seed",
            description="Same data + seed = same model.",
            section="Model",
        ),
        "artifacts_root": Param(
            default_artifacts_root(HOME),
            type="string",
            minLength=1,
            title="Artifacts root",
            description="Runs go to ARTIFACTS/runs/<run_id>/; ARTIFACTS/latest.json names the "
            "last good run.",
            section="Output",
        ),
        "sweep_batches": Param(
            1,
            type="integer",
            minimum=1,
            maximum=MAX_SWEEP_BATCHES,
            title="Sweep batches",
            description="Number of mapped tasks the k sweep is split into (spread over workers).",
            section="Execution",
        ),
    },
)
def customer_segmentation():
    @task
    def load_data_task(params=None, run_id=None, ti=None):
        """**Load and validate.** Checks the params (also `k_min <= k_max` and the allowed
        roots), creates the run directory named after the run id and stores the input as
        Parquet. Bad input fails here at once, without retries."""
        from custseg.orchestration import load_task

        return load_task(params, run_id=run_id, home=HOME, try_number=ti.try_number)

    @task
    def data_preprocessing_task(loaded):
        """**Preprocess.** Drops and counts rows with missing, non-numeric or infinite
        features, exact duplicates and conflicting customer ids; writes the feature table."""
        from custseg.orchestration import preprocess_task

        return preprocess_task(loaded["run_dir"])

    @task
    def plan_sweep_task(prepared, params=None):
        """**Plan the k sweep.** Splits `k_min..k_max` into `sweep_batches` batches, one
        mapped `sweep_k_task` each."""
        from custseg.orchestration import plan_task

        return plan_task(prepared["run_dir"], batches=params["sweep_batches"])

    @task(map_index_template="k={{ ks[0] }}..{{ ks[-1] }}", doc_md=SWEEP_DOC)
    def sweep_k_task(run_dir, ks):
        """**Sweep one batch of k.** Fits K-Means for each k of the batch on the scaled
        features and returns `[{k, sse}]`, every point with its k."""
        from custseg.orchestration import sweep_task

        return sweep_task(run_dir, ks)

    @task
    def build_save_model_task(prepared, results):
        """**Choose k, fit and save.** Merges the sweep (by k), chooses k from the SSE curve,
        fits the final model at that k and saves it with skops, plus elbow and segment
        plots."""
        from custseg.orchestration import fit_task

        return fit_task(prepared["run_dir"], results[:])

    @task(outlets=[MODEL_ASSET])
    def load_model_task(fitted, outlet_events=None):
        """**Load, predict, promote.** Reloads the saved model, scores the test customers,
        writes `metrics.json` and `report.html`, then replaces `latest.json` (only here) and
        emits the model asset event."""
        from custseg.orchestration import finish_task

        summary = finish_task(fitted["run_dir"])
        outlet_events[MODEL_ASSET].extra = {
            "run_id": summary["run_id"],
            "model": summary["model"],
            "chosen_k": summary["chosen_k"],
        }
        return summary

    loaded = load_data_task()
    prepared = data_preprocessing_task(loaded)
    plan = plan_sweep_task(prepared)
    results = sweep_k_task.expand_kwargs(plan)
    fitted = build_save_model_task(prepared, results)
    load_model_task(fitted)


customer_segmentation()
