"""Real services for tests, started on free loopback ports: InfluxDB 1.x (Debian's `influxd`) and
Mosquitto (Debian's `mosquitto`, optionally over TLS or with a password file), and the test
certificates for it (Debian's `openssl`)."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = [
    "InfluxDB",
    "Mosquitto",
    "ServiceError",
    "TlsFiles",
    "free_port",
    "make_tls_files",
    "quote_ident",
]

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
                row["_name"] = series.get("name", "")
                row.update(series.get("tags", {}))
                rows.append(row)
        return rows

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"', method="POST")


class Mosquitto(_Service):
    """One `mosquitto` on a free loopback port, persistence under `root` (so QoS 1 sessions and
    their queued messages survive stop()/start()).

    With `tls`, its one listener speaks TLS only (`url` is then mqtts://), with the server
    certificate of `tls`; with `require_certificate` too, clients must show a certificate signed
    by `tls.ca_file`. With `users` (name → password), anonymous clients are refused and only
    those users are let in (a password file made with Debian's `mosquitto_passwd`).
    """

    name = "mosquitto"

    def __init__(
        self,
        root: Path,
        *,
        executable: str = "mosquitto",
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        users: Mapping[str, str] | None = None,
        acls: Mapping[str, Sequence[tuple[str, str]]] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(root, executable, "install Mosquitto (Debian: apt-get install mosquitto)")
        # Lines of mosquitto.conf over the defaults below, e.g. {"max_inflight_messages": "1000"}.
        self.settings = dict(settings or {})
        if require_certificate and tls is None:
            raise ValueError("require_certificate needs tls")
        for user in users or {}:
            if not user or ":" in user:
                raise ValueError(f"{user!r}: a Mosquitto user name is not empty and has no ':'")
        self.tls = tls
        self.persistence = True  # False: a restart forgets sessions, as a broker without it does
        self.require_certificate = require_certificate
        self.users = dict(users) if users is not None else None
        # user → the (acltype, topic) pairs allowed to them, e.g. ("subscribePattern", "a/#"),
        # ("publishClientSend", "a/b"); everything else is denied. Enforced by Mosquitto's
        # dynamic-security plugin, which (unlike an acl_file) refuses a SUBSCRIBE it does not
        # allow, as most brokers do. Users come from `users`.
        if acls is not None and (users is None or set(acls) - set(users)):
            raise ValueError("acls name users that `users` gives passwords for")
        self.acls = {user: list(pairs) for user, pairs in acls.items()} if acls else None
        self._passwd = _find_passwd_tool() if users is not None else None
        self.port = free_port()
        scheme = "mqtts" if tls is not None else "mqtt"
        self.url = f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if self.users is None else "allow_anonymous false",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.root}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "max_queued_messages 100000",
        ]
        lines = [line for line in lines if line.split(" ", 1)[0] not in self.settings] + [
            f"{key} {value}" for key, value in self.settings.items()
        ]
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if self.require_certificate else 'false'}",
            ]
        if self.acls is not None:
            lines += [
                f"plugin {_find_dynamic_security_plugin()}",
                f"plugin_opt_config_file {self._write_dynamic_security()}",
            ]
        elif self.users is not None:
            lines.append(f"password_file {self._write_password_file()}")
        if os.geteuid() == 0:
            lines.append("user root")  # or it drops to `mosquitto`, who cannot write in root's tmp
        config.write_text("\n".join(lines) + "\n")
        self._spawn(["-c", str(config)])
        self._wait_ready(self._accepts, timeout)

    def _write_password_file(self) -> Path:
        # Plain `user:password` lines, hashed in place by `mosquitto_passwd -U`; readable by the
        # owner only, as Mosquitto asks of a password file.
        assert self.users is not None and self._passwd is not None
        path = self.root / "passwd"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.writelines(f"{user}:{password}\n" for user, password in self.users.items())
        _run([self._passwd, "-U", str(path)], "mosquitto_passwd")
        return path

    def _write_dynamic_security(self) -> Path:
        # The plugin's own JSON: PBKDF2-SHA512 password hashes, one role per user.
        assert self.users is not None and self.acls is not None
        clients, roles = [], []
        for user, password in self.users.items():
            salt = os.urandom(12)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
            clients.append(
                {
                    "username": user,
                    "password": base64.b64encode(digest).decode(),
                    "salt": base64.b64encode(salt).decode(),
                    "iterations": 101,
                    "roles": [{"rolename": user}],
                }
            )
            acls = [
                {"acltype": kind, "topic": topic, "priority": 0, "allow": True}
                for kind, topic in self.acls.get(user, [])
            ]
            roles.append({"rolename": user, "acls": acls})
        access = {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        }
        path = self.root / "dynamic-security.json"
        text = json.dumps({"defaultACLAccess": access, "clients": clients, "roles": roles})
        path.write_text(text, encoding="utf-8")
        path.chmod(0o600)
        return path

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA, a server certificate for 127.0.0.1 and localhost, and a client
    certificate, both signed by the CA."""

    ca_file: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = aguante test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def make_tls_files(directory: Path, *, name: str = "aguante test", days: int = 2) -> TlsFiles:
    """A fresh CA under `directory` and a server and a client certificate it signed, made with
    the `openssl` command (EC P-256 keys: quick to make). Raises ServiceError without it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ServiceError("'openssl' is not on PATH: install it (Debian: apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG)
    files = TlsFiles(
        ca_file=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run(
        [openssl, "req", "-x509", "-config", str(config), "-extensions", "ca", *new_key,
         "-subj", f"/CN={name} CA", "-days", str(days),
         "-keyout", str(files.ca_key), "-out", str(files.ca_file)],
        "openssl",
    )  # fmt: skip
    leaves = [
        ("server", "127.0.0.1", files.server_cert, files.server_key),
        ("client", f"{name} client", files.client_cert, files.client_key),
    ]
    for serial, (extensions, common_name, cert, key) in enumerate(leaves, start=1):
        request = directory / f"{extensions}.csr"
        _run(
            [openssl, "req", "-new", "-config", str(config), *new_key,
             "-subj", f"/CN={common_name}", "-keyout", str(key), "-out", str(request)],
            "openssl",
        )  # fmt: skip
        _run(
            [openssl, "x509", "-req", "-in", str(request), "-CA", str(files.ca_file),
             "-CAkey", str(files.ca_key), "-set_serial", str(serial), "-days", str(days),
             "-extfile", str(config), "-extensions", extensions, "-out", str(cert)],
            "openssl",
        )  # fmt: skip
    return files


def _find_dynamic_security_plugin() -> str:
    # Debian's mosquitto package brings it beside libmosquitto.
    found = sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))
    found += sorted(Path("/usr/lib").glob("mosquitto_dynamic_security.so"))
    if not found:
        raise ServiceError("Mosquitto's dynamic-security plugin is missing (Debian: mosquitto)")
    return str(found[0])


def _find_passwd_tool() -> str:
    # Debian's mosquitto package brings it (in /usr/bin; the broker is in /usr/sbin).
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path="/usr/bin:/usr/sbin"
    )
    if found is None:
        raise ServiceError(
            "'mosquitto_passwd' is not on PATH: install Mosquitto, which brings it "
            "(Debian: apt-get install mosquitto)"
        )
    return found


def _run(argv: list[str], what: str) -> None:
    try:
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=True, timeout=30)
    except subprocess.CalledProcessError as exc:
        output = (exc.stdout + exc.stderr).decode(errors="replace").strip()
        raise ServiceError(f"{what} failed with {exc.returncode}: {argv}\n{output}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"{what} could not run: {exc}") from None


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier: backslash and double quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
