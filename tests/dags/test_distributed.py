"""The DAG on a real Airflow cluster: CeleryExecutor, PostgreSQL metadata DB, Redis broker.

Starts api-server, scheduler, dag-processor and two Celery workers (separate processes with
their own hostnames) on free ports in a temporary AIRFLOW_HOME against a fresh database on
the machine's PostgreSQL and the machine's Redis, triggers `customer_segmentation` through the
REST API with the k sweep split into batches, and checks that mapped sweep tasks ran on both
workers and that `metrics.json` equals an embedded `run_pipeline` run on the same data and seed.
Artifacts are `file://` here: that works only because every worker shares this machine's disk.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import uuid
from pathlib import Path

import pytest

from tests.airflow_harness import (
    AirflowApi,
    Stack,
    airflow_env,
    free_port,
    start_on_free_port,
    wait_for,
    write_password_file,
)
from tests.conftest import missing

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    # the outer deadline covers every inner wait: 5 start-ups and one run
    pytest.mark.timeout(5 * 360 + 600 + 300),
    # skops probes attributes of every loaded module; airflow's shims warn on each one
    pytest.mark.filterwarnings("ignore:The `airflow:FutureWarning"),
]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "customer_segmentation"
PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
WORKERS = ("custseg-w1", "custseg-w2")
SWEEP_BATCHES = 4  # > one worker's 2 slots: both workers must take sweep tasks
K_MAX = 6
SEED = 7
STARTUP_TIMEOUT = 360  # seconds: a loaded 2-core machine starts Airflow slowly
RUN_TIMEOUT = 600  # a machine at load 13 needed 4.5 min for the run

# Every Celery worker on one machine reports the same FQDN as the task instances' hostname, so
# each worker gets its own name through [core] hostname_callable (a real cluster has real hosts).
HOSTNAME_MODULE = '''
import os


def hostname():
    """This worker's name for task instances (set per worker process by the test)."""
    return os.environ["CUSTSEG_TEST_HOSTNAME"]
'''


def _reachable(addr: tuple[str, int]) -> bool:
    try:
        socket.create_connection(addr, timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def postgres_db():
    """A fresh, uniquely named database on the machine's PostgreSQL; dropped afterwards."""
    if not _reachable(PG):
        missing(f"PostgreSQL is not reachable on {PG[0]}:{PG[1]}")
    if not _reachable(REDIS):
        missing(f"Redis is not reachable on {REDIS[0]}:{REDIS[1]}")
    psycopg2 = pytest.importorskip("psycopg2", reason="extra `celery` (psycopg2) not installed")
    pytest.importorskip("airflow.providers.celery", reason="extra `celery` not installed")
    name = f"custseg_dist_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG[0], port=PG[1], user="postgres", dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgres@{PG[0]}:{PG[1]}/{name}"
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def redis_queue():
    """A unique Celery queue on a Redis database; its keys are removed afterwards."""
    import redis

    db = 1 + uuid.uuid4().int % 15
    queue = f"custseg-{uuid.uuid4().hex[:10]}"
    yield db, queue
    client = redis.Redis(host=REDIS[0], port=REDIS[1], db=db)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _diagnostics(stack: Stack, home: Path) -> str:
    """Component logs plus the last lines of every task attempt's log."""
    parts = [stack.logs(40)]
    for log in sorted(home.glob("logs/dag_id=*/**/*.log")):
        text = log.read_text(errors="replace").splitlines()[-15:]
        parts.append(f"--- {log}\n" + "\n".join(text))
    return "\n".join(parts)


def test_dag_runs_on_celery_cluster(tmp_path, postgres_db, redis_queue, sample_csv,
                                    sample_test_csv):  # fmt: skip
    from cryptography.fernet import Fernet

    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline
    from custseg.rundir import safe_run_id
    from tests.helpers import comparable

    home = tmp_path / "airflow"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "custseg_test_hostname.py").write_text(HOSTNAME_MODULE)
    artifacts_root = tmp_path / "artifacts"  # file:// works: the workers share this disk
    password = secrets.token_hex(12)
    write_password_file(home, {"admin": password})
    redis_db, queue = redis_queue
    fernet, jwt_secret = Fernet.generate_key().decode(), secrets.token_hex(16)

    def environment(port: int) -> dict[str, str]:
        # one metadata DB, broker, fernet key and JWT secret for every component
        return airflow_env(home, port=port, extra={
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__FERNET_KEY": fernet,
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{postgres_db}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{postgres_db}",
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
            "CUSTSEG_HOME": str(ROOT),
            "CUSTSEG_ALLOWED_ROOTS": os.pathsep.join([str(ROOT), str(tmp_path)]),
            "CUSTSEG_ARTIFACTS_ROOT": str(artifacts_root),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
            "MPLBACKEND": "Agg",
        })  # fmt: skip

    airflow = str(Path(sys.executable).with_name("airflow"))
    api: AirflowApi | None = None
    with Stack() as stack:
        try:
            migrate = stack.start("db-migrate", [airflow, "db", "migrate"],
                                  env=environment(0), log_dir=home)  # fmt: skip
            wait_for("airflow db migrate", lambda: migrate.popen.poll() is not None,
                     timeout=STARTUP_TIMEOUT)  # fmt: skip
            assert migrate.popen.returncode == 0, f"db migrate failed\n{migrate.tail()}"
            stack.procs.remove(migrate)
            # the API port is read back from the api-server's sockets; a clash starts over,
            # and every other component is then pointed at the port it really bound
            _, port = start_on_free_port(
                stack, "api-server", lambda p: ([airflow, "api-server"], environment(p)),
                log_dir=home, timeout=STARTUP_TIMEOUT)  # fmt: skip
            env = environment(port)
            api = AirflowApi(f"http://127.0.0.1:{port}", password=password)
            for component in ("scheduler", "dag-processor"):
                stack.start(component, [airflow, component], env=env, log_dir=home)
            workers = {}
            for name in WORKERS:
                workers[name] = stack.start(
                    name,
                    [airflow, "celery", "worker", "-H", f"{name}@%h", "-q", queue, "-c", "2"],
                    env={**env,
                         "AIRFLOW__CORE__HOSTNAME_CALLABLE": "custseg_test_hostname.hostname",
                         "CUSTSEG_TEST_HOSTNAME": name,
                         "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())},
                    log_dir=home,
                )  # fmt: skip
            wait_for("api-server, DB and scheduler healthy", api.healthy,
                     timeout=STARTUP_TIMEOUT, stack=stack)  # fmt: skip
            for name, proc in workers.items():
                wait_for(f"Celery worker {name} ready", lambda p=proc, n=name: (
                    f"{n}@" in (text := p.log.read_text(errors="replace")) and " ready." in text
                ), timeout=STARTUP_TIMEOUT, stack=stack)  # fmt: skip
            wait_for("the DAG to be parsed", lambda: api.dag(DAG_ID),
                     timeout=STARTUP_TIMEOUT, stack=stack)  # fmt: skip
            run_id = f"dist-{uuid.uuid4().hex[:8]}"
            api.trigger(DAG_ID, run_id=run_id, conf={
                "input_path": str(sample_csv),
                "test_path": str(sample_test_csv),
                "k_min": 1,
                "k_max": K_MAX,
                "seed": SEED,
                "artifacts_root": f"file://{artifacts_root}",
                "sweep_batches": SWEEP_BATCHES,
            })  # fmt: skip
            state = api.wait_run(DAG_ID, run_id, timeout=RUN_TIMEOUT, stack=stack)
            tis = api.task_instances(DAG_ID, run_id)
            table = "\n".join(
                f"{ti['task_id']}[{ti['map_index']}] {ti['state']} on {ti['hostname']}"
                for ti in tis
            )
            assert state == "success", f"run {run_id}: {state}\n{table}\n"
        except Exception as exc:
            raise AssertionError(f"{exc}\n{_diagnostics(stack, home)}") from exc
        finally:
            if api is not None:
                api.close()

    sweeps = [ti for ti in tis if ti["task_id"] == "sweep_k_task"]
    assert sorted(ti["map_index"] for ti in sweeps) == list(range(SWEEP_BATCHES)), table
    assert all(ti["state"] == "success" for ti in tis), table
    # which worker takes which task is Celery's dispatch timing: only that they are ours
    assert {ti["hostname"] for ti in tis} <= set(WORKERS), table
    # every task goes to [operators] default_queue ("default" unless set; a unique one here,
    # so that no other worker on this Redis takes our tasks), none to a queue of its own
    assert {ti["queue"] for ti in tis} == {queue}, table
    # a prefork Celery worker's processes are daemonic: the sweep runs in-process and says so
    logs = [p.read_text(errors="replace")
            for p in (home / "logs").rglob("*task_id=sweep_k_task*/**/*.log")]  # fmt: skip
    sweep_lines = [ln[:300] for t in logs for ln in t.splitlines() if "sweep" in ln]
    assert logs and all("running in-process (daemonic processes are not allowed to have "
                        "children)" in text for text in logs), sweep_lines  # fmt: skip

    latest = json.loads((artifacts_root / "latest.json").read_text())
    run_dir = Path(latest["run_dir"].removeprefix("file://"))
    assert run_dir.name.startswith(safe_run_id(run_id))  # -try<n> after a retry
    assert (run_dir / "model.skops").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    embedded = run_pipeline(
        PipelineConfig(k_min=1, k_max=K_MAX, seed=SEED), input_path=str(sample_csv),
        test_path=str(sample_test_csv), out=str(tmp_path / "embedded"), run_id="embedded",
    )  # fmt: skip
    expected = json.loads((Path(embedded["run_dir"]) / "metrics.json").read_text())
    assert comparable(metrics) == comparable(expected)
    assert metrics["k_range"] == [1, K_MAX]
    assert metrics["chosen_k"] == expected["chosen_k"]
