"""Real services for tests, started on free loopback ports: InfluxDB 1.x (Debian's `influxd`)."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["InfluxDB", "ServiceError", "free_port", "quote_ident"]

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A test service could not be started, or answered a query with an error."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # If pytest is killed outright, finalizers never run: let the kernel stop influxd for us.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
  log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxDB:
    """One `influxd` on free loopback ports with its data under `root`; survives stop()/start().

    With `auth=True`, an admin user `admin` / `admin-password` is created at first start.
    """

    ADMIN_USER = "admin"
    ADMIN_PASSWORD = "admin-password"

    def __init__(self, root: Path, *, auth: bool = False, executable: str = "influxd") -> None:
        found = shutil.which(executable)
        if found is None:
            raise ServiceError(
                f"{executable!r} is not on PATH: install InfluxDB 1.x "
                "(Debian: apt-get install influxdb) to run the integration tests"
            )
        self.executable = found
        self.root = root
        self.auth = auth
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = root / "influxd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._admin_created = False

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root,
                rpc_port=self.rpc_port,
                http_port=self.http_port,
                auth="true" if self.auth else "false",
            )
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "-config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Its own process group: a Ctrl-C meant for the demo or pytest reaches the parent,
                # which stops influxd last, after what writes to it has flushed.
                start_new_session=True,
            )
        self._wait_ready(timeout)
        if self.auth and not self._admin_created:
            # With auth on, InfluxDB 1.x lets the very first admin user be created anonymously.
            self.query(
                f"CREATE USER {self.ADMIN_USER} WITH PASSWORD '{self.ADMIN_PASSWORD}' "
                "WITH ALL PRIVILEGES",
                method="POST",
                auth=False,
            )
            self._admin_created = True

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServiceError(
                    f"influxd exited with {self._process.returncode} at start:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204:
                    return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"influxd did not answer /ping within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def query(
        self, q: str, *, database: str | None = None, method: str = "GET", auth: bool = True
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; rows of every series of the first statement, times in ms, plus `_name`
        (the measurement) and the series' tags."""
        params = {"q": q, "epoch": "ms"}
        if database is not None:
            params["db"] = database
        credentials = (self.ADMIN_USER, self.ADMIN_PASSWORD) if self.auth and auth else None
        response = httpx.request(
            method, f"{self.url}/query", params=params, auth=credentials, timeout=10.0
        )
        body = response.json() if response.content else {}
        if response.status_code != 200 or "error" in body:
            raise ServiceError(f"query {q!r} failed with {response.status_code}: {body}")
        result = body["results"][0]
        if "error" in result:
            raise ServiceError(f"query {q!r} failed: {result['error']}")
        rows: list[dict[str, Any]] = []
        for series in result.get("series", []):
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row["_name"] = series["name"]
                row.update(series.get("tags", {}))
                rows.append(row)
        return rows

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', method="POST")

    def __enter__(self) -> InfluxDB:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier: backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
