"""Deploy files: docker-compose.yaml validates with `docker-compose config -q`, has the services of
the official Airflow 3 compose file, and takes every secret from `.env` (no default passwords).

No Docker engine runs here; `docker-compose config` only parses and interpolates the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
SECRETS = (
    "POSTGRES_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_ADMIN_PASSWORD",
    "CUSTSEG_SERVE_TOKEN",
)
AIRFLOW_SERVICES = {
    "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
    "airflow-worker", "airflow-init",
}  # fmt: skip


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        missing("docker-compose not installed (Debian package docker-compose; .ci/run adds it)")
    # a clean environment: nothing from the caller's shell may fill in a secret
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file",
         str(env_file), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _filled_env(tmp_path: Path) -> Path:
    text = ENV_EXAMPLE.read_text()
    for name in SECRETS:
        text = re.sub(rf"^{name}=$", f"{name}=test-{name.lower()}", text, flags=re.M)
    path = tmp_path / "env"
    path.write_text(text)
    return path


def test_env_example_documents_every_secret_without_a_value():
    text = ENV_EXAMPLE.read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=$", text, flags=re.M), f"{name} must be listed, empty"
    assert "CUSTSEG_ARTIFACTS_ROOT=" in text


def test_compose_validates_with_env(tmp_path):
    proc = _compose(_filled_env(tmp_path), "config", "-q")
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path):
    proc = _compose(ENV_EXAMPLE, "config", "-q")
    assert proc.returncode != 0
    assert re.search(r"set (POSTGRES_PASSWORD|REDIS_PASSWORD|AIRFLOW\S+) in \.env", proc.stderr)


def test_compose_services_share_secrets_from_env(tmp_path):
    proc = _compose(_filled_env(tmp_path), "config")
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert AIRFLOW_SERVICES | {"postgres", "redis"} <= set(services)
    for name in AIRFLOW_SERVICES:
        svc = services[name]
        env = svc["environment"]
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "test-airflow__api_auth__jwt_secret"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == "test-airflow__core__fernet_key"
        assert (
            "test-postgres_password@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        )
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith(":8080/execution/")
        assert env["CUSTSEG_ARTIFACTS_ROOT"] == "/opt/airflow/artifacts"
        assert any(v.endswith(":/opt/airflow/dags:ro") for v in svc["volumes"])
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "test-postgres_password"
    assert services["airflow-worker"]["command"] == "celery worker"
    init_env = services["airflow-init"]["environment"]
    assert init_env["_AIRFLOW_WWW_USER_PASSWORD"] == "test-airflow_admin_password"
    assert "airflow:airflow@" not in COMPOSE.read_text()


def test_dockerfile_extends_airflow_and_installs_the_package():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG AIRFLOW_VERSION=3\.3\.2$", text, flags=re.M)
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in text
    assert '"/opt/custseg[s3,serve]"' in text
    assert '"celery<5.7"' in text


def test_the_scoring_service_reads_the_artifacts_root_and_has_a_health_check(tmp_path):
    proc = _compose(_filled_env(tmp_path), "config")
    assert proc.returncode == 0, proc.stderr
    serve = yaml.safe_load(proc.stdout)["services"]["custseg-serve"]
    assert serve["entrypoint"] == ["custseg"]
    assert serve["command"][:3] == ["serve", "--model", "/opt/airflow/artifacts"]
    assert serve["environment"]["CUSTSEG_SERVE_TOKEN"] == "test-custseg_serve_token"
    assert "/health" in " ".join(serve["healthcheck"]["test"])
    assert any("custseg-artifacts" in str(v) for v in serve["volumes"])
