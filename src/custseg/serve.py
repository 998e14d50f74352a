"""`custseg serve`: segment customers over HTTP with the promoted model, following promotions.

FastAPI on uvicorn. The model is the run an artifacts root's `latest.json` names (or a fixed
run directory); a watcher thread re-reads `latest.json` every `poll_seconds` and swaps in the
new model once it has loaded and passed the trusted-type, limits and hash checks, so a
promotion needs no restart and in-flight requests finish on the model they started with. A
model that fails to load is refused and logged; the previous one keeps serving.

Requests are parsed by hand rather than by a pydantic model, so every error says what a
client must fix: 400 malformed JSON, 413 too many records or bytes, 422 naming the record's
index and the field. Nothing a client sends reaches the file system.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from custseg.errors import InputError
from custseg.sanitize import logger

log = logger(__name__)

MAX_RECORDS = 10_000
MAX_BYTES = 5 << 20
ENV_MODEL, ENV_TOKEN = "CUSTSEG_SERVE_MODEL", "CUSTSEG_SERVE_TOKEN"


@dataclass(frozen=True)
class Served:
    """One loaded model and what responses need of its run."""

    run_id: str
    model: Any
    features: tuple[str, ...]
    labels: dict[int, str]
    novelty: dict[int, float]
    info: dict[str, Any]
    source: str
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)


def load_served(path: str) -> Served:
    """The model a path names (run directory, model file or artifacts root), checked."""
    from custseg.drift import novelty_limits
    from custseg.model import model_info
    from custseg.rundir import resolve_run

    run = resolve_run(path)
    model = run.load_model(verify=True)
    metrics = run.metrics()
    info = model_info(model)
    return Served(
        run_id=run.run_id,
        model=model,
        features=info.features,
        labels={int(s["segment"]): str(s.get("name") or s["label"]) for s in metrics["segments"]},
        novelty=novelty_limits(metrics),
        info={
            "run_id": run.run_id, "k": info.k, "features": list(info.features),
            "scaler": metrics["scaler"], "trained_at": metrics["created_at"],
            "categories": {c: list(v) for c, v in info.categories.items()},
            "segments": metrics["segments"], "model_sha256": metrics.get("model_sha256"),
        },
        source=run.uri,
        categories=info.categories,
    )  # fmt: skip


class ModelHolder:
    """The model being served, swapped atomically when `latest.json` moves."""

    def __init__(self, path: str, *, poll_seconds: float = 1.0) -> None:
        self.path, self.poll_seconds = path, poll_seconds
        self.current: Served | None = None
        self._seen: bytes | None = None
        self._stop = threading.Event()

    def _pointer(self) -> bytes | None:
        from custseg import storage
        from custseg.rundir import LATEST

        latest = storage.join(self.path, LATEST)
        try:
            return storage.read_bytes(latest) if storage.exists(latest) else None
        except OSError:
            return None

    def refresh(self) -> bool:
        """Load the model if `latest.json` changed (or nothing is loaded); True if swapped."""
        pointer = self._pointer()
        if self.current is not None and pointer == self._seen:
            return False
        try:
            served = load_served(self.path)
        except (InputError, OSError, ValueError, KeyError) as exc:
            log.error("model not loaded, %s: %s", "keeping the previous one" if self.current
                      else "not ready", exc)  # fmt: skip
            self._seen = pointer  # do not retry a refused file until latest.json moves again
            return False
        self._seen = pointer
        old, self.current = self.current, served
        log.info("serving run %s (k=%d) from %s%s", served.run_id, len(served.labels),
                 served.source, f", was {old.run_id}" if old else "")  # fmt: skip
        return True

    def watch(self) -> None:
        """Poll until `stop`; runs on a daemon thread."""
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def start(self) -> None:
        self.refresh()
        threading.Thread(target=self.watch, name="custseg-model-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


class RequestError(Exception):
    """A client error: HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_records(
    body: bytes,
    features: tuple[str, ...],
    *,
    max_records: int,
    categories: dict[str, tuple[str, ...]] | None = None,
) -> np.ndarray:
    """The feature matrix of a JSON body: one object or a list of objects keyed by the
    model's feature names (matched as the CLI matches columns). A categorical feature's
    value becomes its code in `categories` (`custseg.io.UNSEEN` for a value outside them)."""
    from custseg.io import UNSEEN, resolve_column

    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None
    records = data if isinstance(data, list) else [data]
    if not records:
        raise RequestError(422, "no customers: send one object or a non-empty list")
    if len(records) > max_records:
        raise RequestError(413, f"{len(records)} customers in one request, over the limit of "
                                f"{max_records}; split the request")  # fmt: skip
    X = np.empty((len(records), len(features)), dtype=np.float64)
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise RequestError(422, f"record {i}: not a JSON object of feature values")
        keys = [str(k) for k in record]
        used = set()
        for j, feature in enumerate(features):
            try:
                key = resolve_column(feature, keys, source=f"record {i}",
                                     needed_by="the model")  # fmt: skip
            except InputError:
                raise RequestError(422, f"record {i}: missing feature {feature!r} "
                                        f"(send {list(features)})") from None  # fmt: skip
            used.add(key)
            if feature in (categories or {}):
                value = record[key]
                cats = categories[feature]
                if not isinstance(value, str | int) or isinstance(value, bool):
                    raise RequestError(
                        422,
                        f"record {i}: {key!r} must be one of its values {list(cats)}, "
                        f"got {value!r}",
                    )
                X[i, j] = cats.index(str(value).strip()) if str(value).strip() in cats else UNSEEN
                continue
            X[i, j] = _number(record[key], i, key)
        extra = [
            k
            for k in keys
            if k not in used and k.lower() not in ("id", "customer_id", "customerid")
        ]
        if extra:
            raise RequestError(422, f"record {i}: unknown field(s) {extra} (the model uses "
                                    f"{list(features)}, plus an optional id)")  # fmt: skip
    return X


def _number(value: Any, i: int, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(422, f"record {i}: field {key!r} is {value!r}, not a number")
    if not math.isfinite(value):
        raise RequestError(422, f"record {i}: field {key!r} is {value}, not a finite number")
    return float(value)


def score(served: Served, X: np.ndarray) -> list[dict[str, Any]]:
    """Segment, name, distance, margin to the second-nearest centroid and novelty per row."""
    from custseg.model import assign

    nearest, dist, margin = assign(served.model, X)
    cats = [j for j, f in enumerate(served.features) if f in served.categories]
    out = []
    for i, (seg, a, m) in enumerate(zip(nearest.tolist(), dist.tolist(), margin.tolist(),
                                        strict=True)):  # fmt: skip
        limit = served.novelty.get(seg)
        out.append({
            "segment": seg, "segment_name": served.labels.get(seg, ""),
            "distance": round(a, 6), "margin": None if math.isinf(m) else round(m, 6),
            "novel": None if limit is None else bool(a > limit),
        })  # fmt: skip
        if cats:  # a value the model never saw is scored as no category, and flagged
            out[-1]["unseen_category"] = [served.features[j] for j in cats if X[i, j] < 0]
    return out


class Metrics:
    """Request counts, errors and latencies in Prometheus text format (own registry)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("custseg_requests", "HTTP requests", ["path", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram(
            "custseg_request_seconds", "Request latency", ["path"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.scored = Counter("custseg_customers_scored", "Customers scored", ["run_id"],
                              registry=self.registry)  # fmt: skip

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


EXAMPLE = [{"Annual Income (k$)": 72, "Spending Score (1-100)": 81},
           {"Annual Income (k$)": 20, "Spending Score (1-100)": 15}]  # fmt: skip


def create_app(
    model_path: str,
    *,
    token: str | None = None,
    max_records: int = MAX_RECORDS,
    max_bytes: int = MAX_BYTES,
    poll_seconds: float = 1.0,
) -> Any:
    """The FastAPI application serving the model `model_path` names (see the module doc)."""
    holder = ModelHolder(model_path, poll_seconds=poll_seconds)
    metrics = Metrics()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ARG001
        holder.start()
        yield
        holder.stop()

    app = FastAPI(
        title="custseg scoring service",
        lifespan=lifespan,
        description="Segments customers with the promoted custseg model.",
    )
    app.state.holder = holder

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        path = request.url.path
        if (
            token
            and path not in ("/health", "/docs", "/openapi.json")
            and not hmac.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}")
        ):
            response: Any = JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                                         headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        else:
            response = await call_next(request)
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    def error(exc: RequestError) -> Any:
        return JSONResponse({"detail": str(exc)}, exc.status)

    @app.post(
        "/predict",
        summary="Segment one customer or a list of customers",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [{"type": "object"}, {"type": "array", "items":
                                                      {"type": "object"}}]},
            "example": EXAMPLE}}}},
    )  # fmt: skip
    async def predict(request: Request) -> Any:
        served = holder.current
        if served is None:
            return JSONResponse({"detail": "no model loaded yet"}, 503)
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_bytes:
            return error(RequestError(413, f"body of {declared} bytes, over {max_bytes}"))
        body = await request.body()
        if len(body) > max_bytes:
            return error(RequestError(413, f"body of {len(body)} bytes, over {max_bytes}"))
        try:
            X = parse_records(body, served.features, max_records=max_records,
                              categories=served.categories)  # fmt: skip
        except RequestError as exc:
            return error(exc)
        results = score(served, X)
        metrics.scored.labels(served.run_id).inc(len(results))
        return {"run_id": served.run_id, "predictions": results}

    @app.get("/health", summary="Liveness and readiness (ready once a model is loaded)")
    async def health() -> Any:
        served = holder.current
        body = {"live": True, "ready": served is not None,
                "run_id": served.run_id if served else None}  # fmt: skip
        return JSONResponse(body, 200 if served is not None else 503)

    @app.get("/model", summary="The served model: run, k, features, scaler, segments")
    async def model() -> Any:
        served = holder.current
        if served is None:
            return JSONResponse({"detail": "no model loaded yet"}, 503)
        return served.info

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Any:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    return app


def app_from_env() -> Any:
    """The application configured by `CUSTSEG_SERVE_MODEL` and `CUSTSEG_SERVE_TOKEN` (what
    `custseg serve --workers N` gives each uvicorn worker); custseg's INFO lines (which model
    is served, why one was refused) go to stderr beside uvicorn's."""
    import logging

    root = logging.getLogger("custseg")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     custseg: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return create_app(os.environ[ENV_MODEL], token=os.environ.get(ENV_TOKEN) or None)


def serve(model_path: str, *, host: str, port: int, workers: int, token: str | None) -> None:
    """Run the service with uvicorn until interrupted."""
    import uvicorn

    from custseg.rundir import resolve_run

    resolve_run(model_path)  # fail now, in one line, if there is nothing to serve
    os.environ[ENV_MODEL] = model_path
    if token:
        os.environ[ENV_TOKEN] = token
    uvicorn.run("custseg.serve:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info", access_log=False)  # fmt: skip


__all__ = ["ModelHolder", "Served", "create_app", "load_served", "parse_records", "score"]
