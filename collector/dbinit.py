"""`aguante db init`: create in InfluxDB what the collector, maintenance and Grafana need — the
database, its retention policies and their users — over the v1 `/query` API, idempotently.

InfluxDB 2.x and 3.x serve that API for reading and writing but make databases and users their
own way; their refusal is recognised and answered with what to run there instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from collector.config import Config, InfluxDBConfig, Language
from collector.i18n import translate
from collector.influxql import quote_ident, quote_string
from collector.sinks.influxdb import create_database_statement, create_rollup_policy_statement

__all__ = [
    "GRAFANA_PASSWORD",
    "GRAFANA_USERNAME",
    "WRITER_PASSWORD",
    "WRITER_USERNAME",
    "DbInitError",
    "Status",
    "Step",
    "init_database",
]

WRITER_USERNAME = "AGUANTE_INFLUXDB_WRITER_USERNAME"
WRITER_PASSWORD = "AGUANTE_INFLUXDB_WRITER_PASSWORD"
GRAFANA_USERNAME = "AGUANTE_GRAFANA_INFLUXDB_USERNAME"
GRAFANA_PASSWORD = "AGUANTE_GRAFANA_INFLUXDB_PASSWORD"
# The admin's, the ones the factory config reads: named in messages about credentials.
_ADMIN_VARIABLES = "AGUANTE_INFLUXDB_USERNAME / AGUANTE_INFLUXDB_PASSWORD"

# How 2.x ("not implemented: CREATE DATABASE") and 3.x turn down statements they do not serve.
_NOT_SERVED = re.compile(r"not implemented|not supported|unsupported", re.IGNORECASE)
_NOT_ADMIN = re.compile(r"requires admin privilege|not authorized", re.IGNORECASE)

Privilege = Literal["ALL", "READ"]
Status = Literal["created", "present", "note"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing `init_database` saw to: its message key (the `db` catalogues of
    collector/locales/) and values, and whether it was made now, was there already, or is a note
    (nothing asked)."""

    key: str
    status: Status
    values: Mapping[str, str] = field(default_factory=dict)

    def text(self, language: Language) -> str:
        return translate(language, self.key, **self.values)


class DbInitError(Exception):
    """`init_database` could not finish. `text(language)` is the message for the person running
    it; `steps` are what was done before."""

    def __init__(self, key: str, /, **values: str) -> None:
        self.key = key
        self.values = values
        self.steps: list[Step] = []
        super().__init__(translate("en", key, **values))

    def text(self, language: Language) -> str:
        return translate(language, self.key, **self.values)


@dataclass(frozen=True, slots=True)
class _User:
    name: str
    password: str
    privilege: Privilege
    variable: str  # the environment variable that names it


def init_database(
    config: Config,
    environ: Mapping[str, str],
    *,
    transport: httpx.BaseTransport | None = None,
) -> list[Step]:
    """Create the database, the rollup retention policy, the default retention policy the config
    names and the writer and Grafana users from `environ`; what exists is left (users get their
    password and rights set again). Connects as the config's user, who must be an admin.

    Raises `DbInitError` (with the steps done so far) when a step cannot be done. `transport`
    stands in for the network in tests."""
    users = _users(environ, config.influxdb.username)
    steps: list[Step] = []
    try:
        with _Server(config.influxdb, transport) as server:
            _create_database(server, steps)
            _create_policies(server, config.influxdb, steps)
            _create_users(server, users, steps)
    except DbInitError as exc:
        exc.steps = steps
        raise
    steps.append(Step("db.no_continuous_queries", "note"))
    return steps


def _users(environ: Mapping[str, str], admin: str | None) -> list[_User | Step]:
    """The users asked for, or a step saying none was asked for; checked before any request."""
    wanted: list[_User | Step] = []
    for name_variable, password_variable, privilege, skipped in (
        (WRITER_USERNAME, WRITER_PASSWORD, "ALL", "db.writer_skipped"),
        (GRAFANA_USERNAME, GRAFANA_PASSWORD, "READ", "db.grafana_skipped"),
    ):
        name = environ.get(name_variable) or ""
        password = environ.get(password_variable) or ""
        if not name and not password:
            wanted.append(
                Step(skipped, "note", {"username": name_variable, "password": password_variable})
            )
            continue
        if not password:
            raise DbInitError("db.half_user", given=name_variable, missing=password_variable)
        if not name:
            raise DbInitError("db.half_user", given=password_variable, missing=name_variable)
        if name == admin:
            raise DbInitError("db.user_is_admin", variable=name_variable, user=name)
        wanted.append(_User(name, password, "ALL" if privilege == "ALL" else "READ", name_variable))
    return wanted


def _create_database(server: _Server, steps: list[Step]) -> None:
    database = server.database
    present = {row["name"] for row in server.rows("SHOW DATABASES")}
    if database in present:
        steps.append(Step("db.database_present", "present", {"database": database}))
        return
    server.run(create_database_statement(database))
    steps.append(Step("db.database_created", "created", {"database": database}))


def _create_policies(server: _Server, influx: InfluxDBConfig, steps: list[Step]) -> None:
    database = server.database
    present = {
        row["name"] for row in server.rows(f"SHOW RETENTION POLICIES ON {quote_ident(database)}")
    }
    rollup = influx.rollup_retention_policy
    values = {"database": database}
    if rollup is not None:
        values["policy"] = rollup
        if rollup in present:
            steps.append(Step("db.rollup_policy_present", "present", dict(values)))
        else:
            server.run(create_rollup_policy_statement(database, rollup))
            steps.append(Step("db.rollup_policy_created", "created", dict(values)))
    default = influx.retention_policy
    if default is not None and default != rollup:
        values["policy"] = default
        if default in present:
            steps.append(Step("db.policy_present", "present", dict(values)))
        else:
            server.run(
                f"CREATE RETENTION POLICY {quote_ident(default)} ON {quote_ident(database)} "
                "DURATION INF REPLICATION 1"
            )
            steps.append(Step("db.policy_created", "created", dict(values)))


def _create_users(server: _Server, users: list[_User | Step], steps: list[Step]) -> None:
    wanted = [u for u in users if isinstance(u, _User)]
    present: dict[str, bool] = {}
    if wanted:
        present = {row["user"]: bool(row["admin"]) for row in server.rows("SHOW USERS")}
    database = server.database
    for user in users:
        if isinstance(user, Step):
            steps.append(user)
            continue
        if present.get(user.name):
            raise DbInitError("db.user_is_admin", variable=user.variable, user=user.name)
        name, password = quote_ident(user.name), quote_string(user.password)
        if user.name in present:
            server.run(
                f"SET PASSWORD FOR {name} = {password}",
                shown=f"SET PASSWORD FOR {name} = '…'",
            )
        else:
            server.run(
                f"CREATE USER {name} WITH PASSWORD {password}",
                shown=f"CREATE USER {name} WITH PASSWORD '…'",
            )
        # GRANT sets the user's privilege on the database to exactly this one: a Grafana user
        # that once could write can only read afterwards.
        server.run(f"GRANT {user.privilege} ON {quote_ident(database)} TO {name}")
        role = "writer" if user.privilege == "ALL" else "reader"
        status: Status = "present" if user.name in present else "created"
        steps.append(Step(f"db.{role}_{status}", status, {"user": user.name, "database": database}))


class _Server:
    """The v1 `/query` endpoint as db init needs it: one statement a request, sent in the body
    (passwords stay out of URLs and access logs), failures raised as `DbInitError`."""

    def __init__(self, influx: InfluxDBConfig, transport: httpx.BaseTransport | None) -> None:
        self.url = influx.url
        self.database = influx.database
        self.username = influx.username
        headers = {"Authorization": f"Token {influx.token}"} if influx.token else {}
        auth = (influx.username, influx.password or "") if influx.username else None
        self._client = httpx.Client(
            base_url=self.url,
            auth=auth,
            headers=headers,
            timeout=influx.timeout,
            transport=transport,
        )
        self.version = ""

    def __enter__(self) -> _Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def rows(self, statement: str) -> list[dict[str, Any]]:
        result = self.run(statement)
        return [
            dict(zip(series["columns"], row, strict=True))
            for series in result.get("series", [])
            for row in series.get("values", [])
        ]

    def run(self, statement: str, *, shown: str | None = None) -> dict[str, Any]:
        """The result of one statement; `shown` stands for it in messages (no passwords)."""
        shown = shown or statement
        try:
            response = self._client.post("/query", data={"q": statement})
        except httpx.TransportError as exc:
            raise DbInitError(
                "db.unreachable", url=self.url, reason=f"{type(exc).__name__}: {exc}"
            ) from exc
        self.version = response.headers.get("X-Influxdb-Version", self.version)
        reason, result = _answer(response)
        if response.status_code == 401:
            raise DbInitError(
                "db.auth_failed", url=self.url, reason=reason or "401", variables=_ADMIN_VARIABLES
            )
        if reason is None and result is not None:
            return result
        reason = reason or "?"
        if _NOT_SERVED.search(reason) or _major_version(self.version) >= 2:
            raise DbInitError(
                "db.not_v1",
                url=self.url,
                version=self.version or "?",
                statement=shown,
                reason=reason,
                database=self.database,
            )
        if response.status_code == 403 or _NOT_ADMIN.search(reason):
            raise DbInitError(
                "db.not_admin",
                url=self.url,
                user=self.username or "?",
                statement=shown,
                reason=reason,
                variables=_ADMIN_VARIABLES,
            )
        raise DbInitError("db.refused", url=self.url, statement=shown, reason=reason)


def _answer(response: httpx.Response) -> tuple[str | None, dict[str, Any] | None]:
    """(the server's reason for refusing, or None; the statement's result)."""
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        # 1.x and 3.x answer {"error": ...}, 2.x {"code": ..., "message": ...}.
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key]), None
        results = body.get("results")
        if response.is_success and isinstance(results, list) and results:
            result = results[0]
            if isinstance(result, dict):
                error = result.get("error")
                return (None if error is None else str(error)), result
    text = response.text.strip()[:300] or response.reason_phrase
    return f"HTTP {response.status_code}: {text}", None


def _major_version(version: str) -> int:
    # 1.x answers "1.6.7~rc0", 2.x "v2.7.4" (or "2.7.4"), 3.x "3.0.1".
    match = re.match(r"v?(\d+)", version)
    return int(match[1]) if match else 0
