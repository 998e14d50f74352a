"""Run real Airflow servers (and a headless Chromium) from tests, and always shut them down.

Shared by the live standalone test (tests/dags/test_live.py) and the CeleryExecutor test:
free ports, an isolated Airflow environment, processes in their own process groups that
`stop()` kills with everything they spawned, the REST API v2 (token, unpause, trigger,
poll) and a Chrome DevTools-protocol client for screenshots of the UI.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
CHROMIUM = os.environ.get("CUSTSEG_CHROMIUM", "/usr/bin/chromium")
USER, PASSWORD = "admin", "admin"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, drawn below the kernel's
    ephemeral range: a port the kernel handed out (bind to 0) can be handed out again, to
    any outgoing connection, before the server we start binds it."""
    import random

    low, high = 20000, 32000
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        high = min(high, int(text[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}..{high}")


def write_password_file(home: Path, users: Mapping[str, str] | None = None) -> Path:
    """Pre-write the simple auth manager's password file so the login is known."""
    path = Path(home) / "simple_auth_manager_passwords.json.generated"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(users or {USER: PASSWORD})))
    return path


def airflow_env(
    home: Path,
    *,
    port: int,
    dags_folder: Path = ROOT / "dags",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment for Airflow processes in their own AIRFLOW_HOME (SQLite unless `extra`
    says otherwise), API on 127.0.0.1:`port`, examples off, DAGs unpaused, login admin/admin.

    Every AIRFLOW__* variable of the calling process (e.g. the pytest session's DB) is
    dropped first, so the servers never touch the test session's metadata DB.
    """
    home = Path(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    base_url = f"http://127.0.0.1:{port}"
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                home / "simple_auth_manager_passwords.json.generated"
            ),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A started process (leader of its own process group) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' if it does not exist)."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def start(name: str, cmd: list[str], *, env: Mapping[str, str], log_dir: Path,
          cwd: Path | None = None) -> Proc:  # fmt: skip
    """Start `cmd` in a new session (its own process group), output into `log_dir/name.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with open(log, "ab") as fh:
        popen = subprocess.Popen(
            cmd, env=dict(env), cwd=cwd or ROOT, stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return Proc(name, popen, log)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """All processes below `pid` (from /proc), deepest last."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop(procs: list[Proc], *, timeout: float = 30.0) -> None:
    """SIGTERM each process group (and any descendant that left it), then SIGKILL what is
    left after `timeout` seconds. Only the processes started here are touched."""
    doomed: dict[int, list[int]] = {}
    for proc in procs:
        pid = proc.popen.pid
        doomed[pid] = descendants(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        _signal(doomed[pid], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
    for proc in procs:
        pid = proc.popen.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _signal(doomed[pid] + descendants(pid), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=10)


@dataclass
class Stack:
    """Processes started for one test; `with Stack() as s:` stops them all on exit."""

    procs: list[Proc] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], **kwargs: Any) -> Proc:
        proc = start(name, cmd, **kwargs)
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        """Raise with the log tail of the first process that died."""
        for proc in self.procs:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}"
                )

    def logs(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.name} ({p.log}) ---\n{p.tail(lines)}" for p in self.procs)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.procs)


def wait_for(what: str, check: Any, *, timeout: float, interval: float = 2.0,
             stack: Stack | None = None) -> Any:  # fmt: skip
    """Call `check()` until it returns something truthy; fail with `what` after `timeout`.

    Only transient errors (a refused connection while a server starts, a 502/503) are waited
    out; anything else (a 401, a 500, a failed assertion) fails at once, with the logs.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if stack is not None:
            stack.check_alive()
        try:
            last = check()
        except Exception as exc:
            if not is_transient(exc):
                logs = stack.logs() if stack else ""
                raise AssertionError(f"while waiting for {what}: {exc!r}\n{logs}") from exc
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    logs = stack.logs() if stack else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n"
                       f"{logs}")  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """A refused or dropped connection, a timeout, or a 502/503/504 while a server starts."""
    import httpx

    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError | CdpError):
        return True
    return isinstance(exc, HttpError) and exc.status in (502, 503, 504)


class CdpError(RuntimeError):
    """A DevTools command failed (e.g. evaluated while the page navigates): transient."""


class HttpError(RuntimeError):
    """A REST call answered with an HTTP error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def listeners(port: int) -> set[int]:
    """Pids holding a listening TCP socket on `port` (any address), read from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{cols[9]}]")
    pids = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                pids.add(int(entry.name))
    return pids


class PortClash(RuntimeError):
    """Another process holds the port a server of ours was told to bind."""


def bound_by(proc: Proc, port: int) -> bool:
    """True once `proc` (or a process it spawned) listens on `port`; `PortClash` if the port
    is held by a process outside its tree or the server died saying it could not bind."""
    holders = listeners(port)
    if holders & {proc.popen.pid, *descendants(proc.popen.pid)}:
        return True
    if holders:
        raise PortClash(f"port {port} is held by pid(s) {sorted(holders)}, not by {proc.name}")
    if not proc.alive():
        text = proc.tail(80).lower()
        if "address already in use" in text or "errno 98" in text:
            raise PortClash(f"{proc.name} could not bind port {port}")
        raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
    return False


def start_on_free_port(stack: Stack, name: str, launch: Any, *, log_dir: Path,
                       timeout: float = 300.0, tries: int = 3,
                       ports: Iterator[int] | None = None) -> tuple[Proc, int]:  # fmt: skip
    """Start a server on a free port and wait until the port is read back as bound by that
    server's own process tree; on a clash (someone else took the port first), stop it and
    start again on another port. `launch(port)` returns `(cmd, env)`."""
    clashes = []
    for attempt in range(tries):
        port = next(ports) if ports is not None else free_port()
        cmd, env = launch(port)
        proc = stack.start(name if not attempt else f"{name}-retry{attempt}", cmd, env=env,
                           log_dir=log_dir)  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while not bound_by(proc, port):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} did not bind port {port} in {timeout:.0f}s\n"
                                       f"{proc.tail()}")  # fmt: skip
                time.sleep(0.5)
        except PortClash as clash:
            clashes.append(str(clash))
            stop([proc])
            stack.procs.remove(proc)
            continue
        return proc, port
    raise RuntimeError(f"{name}: every port clashed: {clashes}")


# --------------------------------------------------------------------------- REST API v2


class AirflowApi:
    """The Airflow 3 REST API with a JWT from /auth/token (simple auth manager)."""

    def __init__(self, base_url: str, *, user: str = USER, password: str = PASSWORD) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.user, self.password = user, password
        self.http = httpx.Client(base_url=self.base_url, timeout=30.0)
        self._token: str | None = None

    def healthy(self) -> bool:
        """True once the metadata DB and the scheduler report healthy."""
        res = self.http.get("/api/v2/monitor/health")
        if res.status_code != 200:
            return False
        body = res.json()
        return all(
            body.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler")
        )

    def token(self) -> str:
        """A JWT for the configured user (cached)."""
        if self._token is None:
            creds = {"username": self.user, "password": self.password}
            res = self.http.post("/auth/token", json=creds)
            res.raise_for_status()
            self._token = str(res.json()["access_token"])
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One REST call; a transient failure (see `is_transient`) is retried up to 3 times."""
        headers = {"Authorization": f"Bearer {self.token()}"}
        for attempt in range(4):
            try:
                res = self.http.request(method, path, headers=headers, **kwargs)
                if res.status_code == 500 and "Database error" in res.text:
                    # SQLite (standalone) was locked by a busy scheduler: retried
                    raise HttpError(f"{method} {path} -> 500 (database busy)", 503)
                if res.status_code >= 400:
                    raise HttpError(f"{method} {path} -> {res.status_code}: {res.text[:500]}",
                                    res.status_code)  # fmt: skip
                return res.json() if res.content else None
            except Exception as exc:
                if attempt == 3 or not is_transient(exc):
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def dag(self, dag_id: str) -> Any:
        """The DAG's details, or None while the dag-processor has not registered it."""
        try:
            return self.request("GET", f"/api/v2/dags/{dag_id}")
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, *, run_id: str, conf: Mapping[str, Any]) -> Any:
        """Trigger a manual run (`logical_date` must be given, null for 'none')."""
        body = {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)}
        try:
            return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)
        except HttpError as exc:
            if exc.status != 409:  # 409: a retried POST whose first attempt went through
                raise
            return self.run(dag_id, run_id)

    def run(self, dag_id: str, run_id: str) -> Any:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's runs (any trigger: manual, scheduled, asset-triggered)."""
        return list(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The run's state (queued, running, success, failed)."""
        return str(self.run(dag_id, run_id)["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")
        return list(body["task_instances"])

    def wait_run(self, dag_id: str, run_id: str, *, timeout: float,
                 stack: Stack | None = None) -> str:  # fmt: skip
        """Poll until the run is success or failed; returns the final state."""

        def done() -> str | None:
            state = self.run(dag_id, run_id)["state"]
            return state if state in ("success", "failed") else None

        return str(wait_for(f"run {run_id} to finish", done, timeout=timeout, stack=stack))

    def close(self) -> None:
        self.http.close()


# --------------------------------------------------------------------------- Chromium (CDP)


class Chromium:
    """Headless Chromium driven over the DevTools protocol (websockets, no extra package)."""

    def __init__(self, stack: Stack, log_dir: Path, *, binary: str = CHROMIUM) -> None:
        self.port = free_port()
        profile = log_dir / f"chromium-profile-{self.port}"
        self.proc = stack.start(
            "chromium",
            [binary, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}",
             "--remote-allow-origins=*", "--window-size=1400,1000", "about:blank"],
            env=os.environ, log_dir=log_dir,
        )  # fmt: skip
        self._ws: Any = None
        self._exits = contextlib.ExitStack()
        self._id = 0

    def connect(self, *, timeout: float = 60.0) -> None:
        """Attach to the first page target."""
        import httpx
        from websockets.sync.client import connect

        def page_ws() -> str | None:
            pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=5).json()
            return next((p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page"), None)

        url = wait_for("chromium's DevTools endpoint", page_ws, timeout=timeout, interval=0.5)
        self._ws = self._exits.enter_context(connect(url, max_size=64 * 1024 * 1024,
                                                     open_timeout=30))  # fmt: skip
        self.send("Page.enable")
        self.send("Network.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events in between are skipped)."""
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise CdpError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def set_cookie(self, url: str, name: str, value: str) -> None:
        self.send("Network.setCookie", url=url, name=name, value=value, path="/")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def text(self) -> str:
        """The rendered page's visible text."""
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._exits.close()


@contextlib.contextmanager
def chromium(stack: Stack, log_dir: Path) -> Iterator[Chromium]:
    """A connected headless Chromium, closed (and its processes stopped by `stack`) after."""
    browser = Chromium(stack, log_dir)
    try:
        browser.connect()
        yield browser
    finally:
        browser.close()
