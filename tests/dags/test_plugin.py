"""The Segments view plugin inside Airflow's own API app (in process): routes, auth, paths."""

from __future__ import annotations

import json

import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import safe_run_id
from custseg.scoring import score_customers_with_drift, write_score_set
from tests.dags.conftest import ROOT

pytestmark = pytest.mark.airflow


@pytest.fixture(scope="module")
def root(tmp_base, mall_csv):
    """An artifacts root with a DAG run, a CLI run (promoted) and a score set."""
    from airflow.dag_processing.dagbag import DagBag

    root = tmp_base / "plugin"
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["customer_segmentation"]
    dr = dag.test(run_conf={"input_path": str(mall_csv), "test_path": None, "k_max": 8,
                            "artifacts_root": str(root)})  # fmt: skip
    assert dr.state == "success"
    run_pipeline(PipelineConfig(k_max=8), input_path=str(mall_csv), out=str(root), run_id="cli")
    from custseg.rundir import resolve_run

    write_score_set(score_customers_with_drift(resolve_run(str(root)), str(mall_csv)),
                    root / "scores" / "score-1")  # fmt: skip
    return root, dr.run_id


@pytest.fixture(scope="module")
def client(root, airflow_db):
    """Airflow's API app (with its plugins) over the test root; tokens for three users."""
    import os

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    saved = os.environ.get("CUSTSEG_ARTIFACTS_ROOT")
    os.environ["CUSTSEG_ARTIFACTS_ROOT"] = str(root[0])
    try:
        app = create_app()
        manager = get_auth_manager()
        tokens = {role: manager.generate_jwt(SimpleAuthManagerUser(username=role, role=role))
                  for role in ("admin", "viewer")}  # fmt: skip
        tokens["none"] = manager.generate_jwt(SimpleAuthManagerUser(username="x", role=None))
        with TestClient(app) as http:
            yield http, tokens
    finally:
        if saved is None:
            os.environ.pop("CUSTSEG_ARTIFACTS_ROOT", None)
        else:
            os.environ["CUSTSEG_ARTIFACTS_ROOT"] = saved


ROUTES = ["/custseg/", "/custseg/runs", "/custseg/latest/report", "/custseg/runs/cli/report",
          "/custseg/scores/score-1/drift"]  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_needs_a_user_allowed_to_read_the_dag(client, route):
    http, tokens = client
    assert http.get(route).status_code == 401
    assert http.get(route, headers={"Authorization": "Bearer not-a-jwt"}).status_code in (401, 403)
    bearer = {"Authorization": f"Bearer {tokens['none']}"}
    assert http.get(route, headers=bearer).status_code == 403
    for role in ("admin", "viewer"):
        res = http.get(route, headers={"Authorization": f"Bearer {tokens[role]}"})
        assert res.status_code == 200, (role, res.text[:200])
    # the UI's session cookie works too (plugin views are iframes of the logged-in UI)
    http.cookies.set("_token", tokens["viewer"])
    try:
        assert http.get(route).status_code == 200
    finally:
        http.cookies.clear()


def test_the_run_list_says_what_each_run_is(client, root):
    http, tokens = client
    rows = http.get("/custseg/runs", headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
    by_id = {r["run_id"]: r for r in rows}
    dag_run = by_id[safe_run_id(root[1])]
    assert dag_run["airflow_run_id"] == root[1] and by_id["cli"]["airflow_run_id"] is None
    assert by_id["cli"]["current"] is True and dag_run["current"] is False
    assert by_id["cli"]["k"] == dag_run["k"] == 5
    assert by_id["cli"]["rows_used"] == 200 and by_id["cli"]["confidence"] == "high"
    assert by_id["cli"]["promoted"] is True and by_id["cli"]["complete"] is True
    assert [r["run_id"] for r in rows][0] == "cli"  # newest first


def test_reports_are_served_with_their_images_and_the_segment_table(client, root):
    http, tokens = client
    auth = {"Authorization": f"Bearer {tokens['viewer']}"}
    report = http.get("/custseg/latest/report", headers=auth)
    assert report.headers["content-type"].startswith("text/html")
    assert "img-src data:" in report.headers["content-security-policy"]
    text = report.text
    assert "Customer segments" in text and 'class="dataframe segments"' in text
    assert text.count("data:image/png;base64,") >= 2
    assert report.text == (root[0] / "runs" / "cli" / "report.html").read_text()
    # a DAG run's tab shows what that run made: its report; a scoring run, its drift page
    tab = http.get(f"/custseg/dag-runs/customer_segmentation/{root[1]}", headers=auth)
    assert tab.status_code == 200
    assert tab.text == (root[0] / "runs" / safe_run_id(root[1]) / "report.html").read_text()
    index = http.get("/custseg/", headers=auth).text
    assert 'href="runs/cli/report"' in index and 'href="latest/report"' in index
    assert "score-1" in index and "none" in index


@pytest.mark.parametrize("path", [
    "/custseg/runs/..%2F..%2Fetc/report", "/custseg/runs/..%252F..%252Fetc%252Fpasswd/report",
    "/custseg/runs/.hidden/report", "/custseg/runs/nope/report",
    "/custseg/scores/..%2Fruns%2Fcli/drift", "/custseg/dag-runs/customer_segmentation/unknown",
    "/custseg/dag-runs/score_customers/..%2F..%2Fetc",
])  # fmt: skip
def test_unknown_or_traversal_names_get_404(client, path):
    http, tokens = client
    res = http.get(path, headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert res.status_code == 404, res.text[:200]
    assert "root:" not in res.text


def test_the_plugin_is_registered_with_its_views(client):
    http, tokens = client
    plugins = http.get("/api/v2/plugins",
                       headers={"Authorization": f"Bearer {tokens['admin']}"}).json()  # fmt: skip
    ours = next(p for p in plugins["plugins"] if p["name"] == "custseg")
    views = {(v["destination"], v["href"]) for v in ours["external_views"]}
    assert views == {("nav", "custseg/"), ("dag_run", "custseg/dag-runs/{DAG_ID}/{RUN_ID}")}
    assert json.dumps(ours["fastapi_apps"]).count("/custseg") == 1
