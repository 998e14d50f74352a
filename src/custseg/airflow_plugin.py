"""Airflow 3 plugin: the Segments view (a FastAPI app at `/custseg` and its UI views).

Registered through the `airflow.plugins` entry point, so any Airflow that has custseg
installed loads it; the api-server serves the app. Every route requires a logged-in
Airflow user allowed to read the `customer_segmentation` DAG (plugin routes are public
unless they say so): a request without a valid token or session gets 401, a user without
that permission 403.

Routes: `/custseg/` (the run list and score sets, HTML), `/custseg/runs` (JSON),
`/custseg/runs/{run_id}/report`, `/custseg/latest/report`, `/custseg/scores/{id}/drift`,
and `/custseg/dag-runs/{dag_id}/{run_id}` (what a DAG run made: the report of a training
run, the drift page of a scoring run), shown as a "Segments" tab on every DAG run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

DAG_ID = "customer_segmentation"
PREFIX = "/custseg"


def _store() -> Any:
    from custseg.orchestration import default_artifacts_root, project_home
    from custseg.rundir import ArtifactStore

    return ArtifactStore(default_artifacts_root(project_home()))


def _html(data: bytes | str) -> HTMLResponse:
    from fastapi.responses import HTMLResponse

    # reports embed their images; nothing else is loaded, and nothing may frame it elsewhere
    headers = {"Content-Security-Policy": "default-src 'none'; img-src data:; "
               "style-src 'unsafe-inline'; frame-ancestors 'self'",
               "X-Content-Type-Options": "nosniff"}  # fmt: skip
    return HTMLResponse(data if isinstance(data, str) else data.decode(), headers=headers)


def _found(call: Any, *args: Any) -> Any:
    from fastapi import HTTPException

    from custseg.views import NotFound

    try:
        return call(*args)
    except NotFound:
        raise HTTPException(status_code=404, detail="no such run or score set") from None


def create_app() -> FastAPI:
    """The plugin's FastAPI app; every route needs read access to the custseg DAG."""
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse

    from custseg import views

    may_read = Depends(requires_access_dag("GET", param_dag_id=DAG_ID))
    app = FastAPI(title="custseg segments", dependencies=[may_read])

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        store = _store()  # links are relative to /custseg/
        return _html(views.index_html(views.run_rows(store), views.score_rows(store), base=""))

    @app.get("/runs")
    def runs() -> list[dict[str, Any]]:
        return views.rows_json(views.run_rows(_store()))

    @app.get("/runs/{run_id}/report", response_class=HTMLResponse)
    def run_report(run_id: str) -> HTMLResponse:
        return _html(_found(views.run_report, _store(), run_id))

    @app.get("/latest/report", response_class=HTMLResponse)
    def latest_report() -> HTMLResponse:
        return _html(_found(views.latest_report, _store()))

    @app.get("/scores/{score_id}/drift", response_class=HTMLResponse)
    def drift(score_id: str) -> HTMLResponse:
        return _html(_found(views.drift_page, _store(), score_id))

    @app.get("/dag-runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def dag_run(dag_id: str, run_id: str) -> HTMLResponse:
        from custseg.rundir import safe_run_id

        store = _store()
        if dag_id == "score_customers":
            return _html(_found(views.drift_page, store, safe_run_id(run_id)))
        run = _found(views.run_of_dag_run, store, dag_id, run_id)
        return _html(_found(views.run_report, store, run.run_id))

    return app


class _AppsOnFirstUse:
    """`fastapi_apps`, built when the api-server first reads it: every task process loads
    plugins too (for macros) and never needs the app, so it does not pay for FastAPI and
    Airflow's API security modules."""

    def __get__(self, obj: Any, owner: type) -> list[dict[str, Any]]:
        apps = [{"app": create_app(), "url_prefix": PREFIX, "name": "custseg segments"}]
        owner.fastapi_apps = apps  # type: ignore[attr-defined]
        return apps


class CustsegPlugin(AirflowPlugin):
    """The Segments view: a nav entry (Browse > Segments) and a tab on every DAG run."""

    name = "custseg"
    fastapi_apps = _AppsOnFirstUse()  # type: ignore[assignment]
    external_views = [
        {"name": "Segments", "href": "custseg/", "url_route": "custseg",
         "destination": "nav", "category": "browse"},
        {"name": "Segments", "href": "custseg/dag-runs/{DAG_ID}/{RUN_ID}",
         "url_route": "custseg-run", "destination": "dag_run"},
    ]  # fmt: skip
