"""Apache Airflow 3 DAGs of the segmentation lifecycle: `watch_inbox` and `score_customers`.

Parsing this file only builds the DAGs; every task body is one call into
`custseg.lifecycle`, which imports the heavy libraries inside the task.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, Param, dag, task

from custseg.lifecycle import default_inbox, score_params
from custseg.orchestration import project_home

HOME = project_home(Path(__file__).parent)
NEW_CUSTOMERS = Asset(
    name="custseg_new_customers",
    uri="file://" + str(Path(default_inbox(HOME)).absolute()),
    group="customers",
)

WATCH_DOC = """
# Watch the inbox

Every five minutes, **wait_for_customers_task** (a sensor in `reschedule` mode, so it holds
no worker slot while it waits) looks for a customer file (CSV or Parquet, optionally
compressed) in the inbox folder (`$CUSTSEG_INBOX`, default `ARTIFACTS/inbox`). It claims the
oldest one by renaming it into `inbox/claimed/` (atomic: two watchers never take the same
file) and **announce_customers_task** emits the `custseg_new_customers` asset event with the
claimed path as `extra.input_path`, which schedules `score_customers`.

Write files into the inbox under a hidden or `.part` name and rename them when complete.
"""

SCORE_DOC = """
# Score new customers

Runs on every `custseg_new_customers` asset event (from `watch_inbox`, or from any producer:
`POST /api/v2/assets/events` with `{"input_path": ...}` in `extra`), or by hand with
`input_path`.

1. **score_new_customers_task** scores the file with the promoted model (`latest.json` of
   `artifacts_root`) into `ARTIFACTS/scores/<run_id>/`: `predictions.csv` (segment, name,
   distance, margin, novelty), `drift.json` and `drift.html` (per-feature PSI and KS, the
   segment mix, the novelty share, the distance ratio; one verdict each and one overall).
   The score set appears whole or not at all. The log ends with the overall verdict.
2. **drift_is_significant_task** lets the run go on only when the overall verdict is
   significant and `retrain_on_drift` is on.
3. **retrain_task** triggers `customer_segmentation` with `input_path` = the score set's
   `training.csv` (the promoted run's training data plus these customers, deduplicated by
   customer id, the new row winning), the drift as `reason`, and the options that shaped
   the promoted model (features, categories, transform, k range, ...). That run is promoted
   only if it passes the promotion gate.
"""


@dag(
    dag_id="watch_inbox",
    schedule=dt.timedelta(minutes=5),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["custseg", "lifecycle"],
    doc_md=WATCH_DOC,
)
def watch_inbox():
    @task.sensor(poke_interval=30, timeout=dt.timedelta(minutes=4).total_seconds(),
                 mode="reschedule", soft_fail=True)  # fmt: skip
    def wait_for_customers_task():
        """**Wait for a customer file** in the inbox and claim it."""
        from custseg.lifecycle import watch_task

        return watch_task(HOME)

    @task(outlets=[NEW_CUSTOMERS])
    def announce_customers_task(claimed, outlet_events=None):
        """**Announce** the claimed file on the `custseg_new_customers` asset."""
        outlet_events[NEW_CUSTOMERS].extra = {"input_path": claimed["input_path"]}
        return claimed

    announce_customers_task(wait_for_customers_task())


@dag(
    dag_id="score_customers",
    schedule=[NEW_CUSTOMERS],
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=2,
    tags=["custseg", "lifecycle"],
    doc_md=SCORE_DOC,
    default_args={"retries": 1, "retry_delay": dt.timedelta(seconds=10)},
    render_template_as_native_obj=True,
    params={name: Param(**spec) for name, spec in score_params(HOME).items()},
)
def score_customers():
    @task
    def score_new_customers_task(params=None, run_id=None, triggering_asset_events=None):
        """**Score and measure drift** against the promoted model's training reference."""
        from custseg.lifecycle import score_task

        return score_task(params, run_id=run_id, home=HOME, events=triggering_asset_events)

    @task.short_circuit
    def drift_is_significant_task(scored):
        """**Significant drift?** Goes on to retraining only then (and if enabled)."""
        return scored["retrain"] is not None

    scored = score_new_customers_task()
    pulled = "ti.xcom_pull(task_ids='score_new_customers_task')['retrain']"
    retrain_task = TriggerDagRunOperator(
        task_id="retrain_task",
        trigger_dag_id="customer_segmentation",
        trigger_run_id="retrain__{{ run_id }}",
        conf="{{ " + pulled + " }}",  # rendered as the dict itself (native templates)
        skip_when_already_exists=True,
        doc_md="**Retrain** `customer_segmentation` on the training data plus the new "
        "customers, with the drift as `reason`.",
    )
    drift_is_significant_task(scored) >> retrain_task


watch_inbox()
score_customers()
