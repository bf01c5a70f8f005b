"""Real services for tests, started on free loopback ports: InfluxDB 1.x (Debian's `influxd`) and
Mosquitto (Debian's `mosquitto`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = ["InfluxDB", "Mosquitto", "ServiceError", "free_port", "quote_ident"]

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


class _Service:
    """A server process of the tests' own: data and log under `root`, its own process group,
    stopped with the tests even when pytest is killed; stop() and start() again keep its data."""

    name = "service"

    def __init__(self, root: Path, executable: str, missing_hint: str) -> None:
        found = shutil.which(executable) or shutil.which(executable, path="/usr/sbin:/sbin")
        if found is None:
            raise ServiceError(f"{executable!r} is not on PATH: {missing_hint}")
        self.executable = found
        self.root = root
        self.log_path = root / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _spawn(self, argv: list[str]) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Its own process group: a Ctrl-C meant for the demo or pytest reaches the parent,
                # which stops the services last, after what writes to them has flushed.
                start_new_session=True,
            )

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {self._process.returncode} at start:\n"
                    f"{self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServiceError(f"{self.name} was not ready within {timeout} s:\n{self.log_tail()}")

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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError


class InfluxDB(_Service):
    """One `influxd` on free loopback ports with its data under `root`; survives stop()/start().

    With `auth=True`, an admin user `admin` / `admin-password` is created at first start.
    """

    name = "influxd"
    ADMIN_USER = "admin"
    ADMIN_PASSWORD = "admin-password"

    def __init__(self, root: Path, *, auth: bool = False, executable: str = "influxd") -> None:
        super().__init__(
            root, executable, "install InfluxDB 1.x (Debian: apt-get install influxdb)"
        )
        self.auth = auth
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self._admin_created = False

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
        self._spawn(["-config", str(config)])
        self._wait_ready(self._pings, timeout)
        if self.auth and not self._admin_created:
            # With auth on, InfluxDB 1.x lets the very first admin user be created anonymously.
            self.query(
                f"CREATE USER {self.ADMIN_USER} WITH PASSWORD '{self.ADMIN_PASSWORD}' "
                "WITH ALL PRIVILEGES",
                method="POST",
                auth=False,
            )
            self._admin_created = True

    def _pings(self) -> bool:
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"{self.url}/ping", timeout=1.0).status_code == 204
        return False

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


class Mosquitto(_Service):
    """One `mosquitto` on a free loopback port, persistence under `root` (so QoS 1 sessions and
    their queued messages survive stop()/start())."""

    name = "mosquitto"

    def __init__(self, root: Path, *, executable: str = "mosquitto") -> None:
        super().__init__(root, executable, "install Mosquitto (Debian: apt-get install mosquitto)")
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.root}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # or it drops to `mosquitto`, who cannot write in root's tmp
        config.write_text("\n".join(lines) + "\n")
        self._spawn(["-c", str(config)])
        self._wait_ready(self._accepts, timeout)

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier: backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
