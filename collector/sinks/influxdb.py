"""Write batches to InfluxDB over the v1 HTTP API (`/write`, `/query`), which InfluxDB 1.x serves
natively, 2.x through its v1 compatibility endpoints and 3.x Core as well."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self

import httpx

from collector.config import InfluxDBConfig
from collector.lineprotocol import InvalidPointError, encode_point, line_measurement
from collector.schema import UTILIZATION_DAILY, UTILIZATION_HOURLY, Point
from collector.sinks import AuthWriteError, RejectedWriteError, RetryableWriteError, WriteError
from collector.sinks.http1 import Http1Transport

__all__ = [
    "ROLLUP_SHARD_DURATION",
    "InfluxDBSink",
    "create_database_statement",
    "create_rollup_policy_statement",
    "rollup_policies",
]

log = logging.getLogger(__name__)

_DROPPED = re.compile(r"dropped=(\d+)")
# The hourly and daily sums change slowly and are read a year at a time: one shard a year.
ROLLUP_SHARD_DURATION = "52w"


def rollup_policies(influx: InfluxDBConfig) -> dict[str, str]:
    """Measurement → retention policy, for the sums that live apart from the readings."""
    policy = influx.rollup_retention_policy
    if policy is None:
        return {}
    return {UTILIZATION_HOURLY: policy, UTILIZATION_DAILY: policy}


def create_database_statement(database: str) -> str:
    """`CREATE DATABASE`, idempotent in InfluxQL (the sink's start and `aguante db init`)."""
    return f"CREATE DATABASE {_quote(database)}"


def create_rollup_policy_statement(database: str, policy: str) -> str:
    """The retention policy the hourly and daily sums go to: kept forever, one shard a year; not
    the default one. Answered "already exists" by 1.x only when one of that name differs."""
    return (
        f"CREATE RETENTION POLICY {_quote(policy)} ON {_quote(database)} "
        f"DURATION INF REPLICATION 1 SHARD DURATION {ROLLUP_SHARD_DURATION}"
    )


class _NotFound(AuthWriteError):
    """404: the database, or the retention policy written to, is not there."""


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxDBSink:
    """One InfluxDB database (and optionally retention policy) reached over HTTP.

    Username and password are sent as HTTP Basic auth, which 1.x, 2.x's v1 endpoints and 3.x
    all accept (and, unlike the `u`/`p` query parameters, stays out of proxy access logs);
    for 2.x and 3.x the password is the API token. A token alone goes as `Authorization: Token`.
    """

    @classmethod
    def from_config(cls, influx: InfluxDBConfig) -> Self:
        """The sink the factory file's `influxdb:` section describes."""
        return cls(
            url=influx.url,
            database=influx.database,
            username=influx.username,
            password=influx.password,
            token=influx.token,
            gzip=influx.gzip,
            timeout=influx.timeout,
            create_database=influx.create_database,
            retention_policy=influx.retention_policy,
            retention_policies=rollup_policies(influx),
        )

    def __init__(
        self,
        *,
        url: str,
        database: str,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        gzip: bool = False,
        timeout: float = 5.0,
        create_database: bool = False,
        retention_policy: str | None = None,
        retention_policies: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`retention_policies` sends some measurements to policies of their own (the hourly and
        daily sums to one of long shards); created with the database, and when the server has
        no such policy (2.x, 3.x) their points go to `retention_policy` instead, said once."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"InfluxDB url {url!r} is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(
                f"InfluxDB url {url!r} must start with http:// or https:// and name a host, "
                "e.g. http://localhost:8086"
            )
        if parsed.query:
            raise ValueError(
                f"InfluxDB url {url!r} must not carry a query string; "
                "give database and credentials as their own settings"
            )
        if parsed.userinfo:
            raise ValueError(
                "InfluxDB url must not carry a user name or password (they would not be sent); "
                "give them as username and password"
            )
        if not database:
            raise ValueError("InfluxDB database name is empty: set the database to write to")
        if (username is None) != (password is None):
            raise ValueError("InfluxDB username and password go together: set both or neither")
        if token is not None and username is not None:
            raise ValueError("InfluxDB takes either a token or a username and password, not both")
        if token == "":
            raise ValueError("InfluxDB token is empty: unset it or give the real token")
        if not timeout > 0:
            raise ValueError(f"InfluxDB timeout must be more than 0 seconds, not {timeout}")
        if retention_policy == "":
            raise ValueError("InfluxDB retention_policy is empty: unset it to use the default")
        self.url = str(parsed).rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self.retention_policies = dict(retention_policies or {})
        self.gzip = gzip
        self.timeout = timeout
        self.create_database = create_database
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if username is not None and password is not None:
            basic = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {basic}"
        elif token is not None:
            self._headers["Authorization"] = f"Token {token}"
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._transport = transport
        self._http: httpx.AsyncBaseTransport | None = None
        self._urls: dict[tuple[str, tuple[tuple[str, str], ...]], httpx.URL] = {}
        self._database_ready = not create_database

    def __repr__(self) -> str:
        return f"InfluxDBSink(url={self.url!r}, database={self.database!r})"

    async def __aenter__(self) -> Self:
        # Straight to a transport, without httpx's client: a plant's InfluxDB is reached
        # directly (no proxy, no redirect), and a write a second is worth the millisecond the
        # client would add to each (see http1.py). https: httpx's own, for its TLS checks.
        if self._transport is not None:
            self._http = self._transport
        elif self.url.startswith("http://"):
            self._http = Http1Transport(timeout=self.timeout)
        else:
            self._http = httpx.AsyncHTTPTransport()
        if self.create_database:
            try:
                await self._create_database()
            except WriteError as exc:
                # InfluxDB may well start after the collector: try again before the first write.
                log.warning("%s; will create the database before the first write", exc)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        http, self._http = self._http, None
        if http is not None and http is not self._transport:
            await http.aclose()  # a transport given from outside is its owner's to close

    async def write(self, points: Sequence[Point]) -> None:
        """Write the batch. Raises `RejectedWriteError` after writing every point but the refused
        ones, `RetryableWriteError` or `AuthWriteError` when the batch must be sent again."""
        lines: list[str] = []
        refused: list[tuple[str, str]] = []
        for point in points:
            try:
                lines.append(encode_point(point))
            except InvalidPointError as exc:
                refused.append((repr(point), exc.reason))
        try:
            await self.write_lines(lines)
        except RejectedWriteError as exc:
            refused += zip(exc.lines, exc.reasons, strict=True)
        if refused:
            raise self._refusal(refused, len(points), "points")

    async def write_lines(self, lines: Sequence[str]) -> None:
        """Write encoded lines, each to its measurement's retention policy; raises as `write`."""
        if not self._database_ready:
            await self._create_database()
        if not lines:
            return
        by_policy: dict[str | None, list[str]] = {}
        routed = self._routed_prefixes()
        for line in lines:
            policy = self.retention_policy
            if routed and line.startswith(routed):
                policy = self.retention_policies.get(line_measurement(line), policy)
            by_policy.setdefault(policy, []).append(line)
        refused: list[tuple[str, str]] = []
        for policy, group in by_policy.items():
            refused += await self._write_policy(group, policy)
        if refused:
            raise self._refusal(refused, len(lines), "lines")

    def _refusal(self, refused: list[tuple[str, str]], total: int, what: str) -> WriteError:
        return RejectedWriteError(
            f"InfluxDB at {self.url}: refused {len(refused)} of {total} {what}, "
            f"first because {refused[0][1]}",
            lines=[line for line, _ in refused],
            reasons=[reason for _, reason in refused],
        )

    def _routed_prefixes(self) -> tuple[str, ...]:
        # Lines of a routed measurement start with its (escaped) name and a comma or a space:
        # a cheap test first, the measurement itself parsed only for those.
        return tuple(_escaped_measurement(m) + end for m in self.retention_policies for end in ", ")

    async def _write_policy(self, lines: list[str], policy: str | None) -> list[tuple[str, str]]:
        if policy == self.retention_policy:
            return await self._write_isolating(lines, policy)
        try:
            return await self._write_isolating(lines, policy)
        except _NotFound:
            pass
        # No such policy here (2.x maps policies to buckets, 3.x has none): write with the rest.
        log.warning(
            "InfluxDB at %s: no retention policy %r in %r; writing its measurements to the "
            "default one; set influxdb.rollup_retention_policy: null to say so",
            self.url,
            policy,
            self.database,
        )
        self.retention_policies = {m: p for m, p in self.retention_policies.items() if p != policy}
        return await self._write_isolating(lines, self.retention_policy)

    async def _write_isolating(
        self, lines: list[str], policy: str | None = None
    ) -> list[tuple[str, str]]:
        """Write lines; on a refusal bisect, since the server stores the good lines of a batch
        it partly refuses and rewriting a stored point just overwrites it with itself."""
        refused, reason = await self._post_lines(lines, policy)
        if not refused:
            return []
        dropped = _DROPPED.search(reason)
        if len(lines) == 1 or (dropped is not None and int(dropped.group(1)) == len(lines)):
            return [(line, reason) for line in lines]
        middle = len(lines) // 2
        return await self._write_isolating(lines[:middle], policy) + await self._write_isolating(
            lines[middle:], policy
        )

    async def _post_lines(self, lines: list[str], policy: str | None) -> tuple[bool, str]:
        """(refused, reason): refused when the server would not take some of these lines."""
        body = "".join(line + "\n" for line in lines).encode()
        headers = None
        if self.gzip:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers = {"Content-Encoding": "gzip"}
        params = {"db": self.database, "precision": "ms"}
        if policy is not None:
            params["rp"] = policy
        response = await self._request(
            "POST", "write", params=params, content=body, headers=headers
        )
        if response.is_success:
            return False, ""
        reason = _server_reason(response)
        # 400: parse error, type conflict, beyond retention (1.x; 3.x); 422: the same on 2.x;
        # 413: batch too large for the server, so halves may pass.
        if response.status_code in (400, 413, 422):
            return True, reason
        if "retention policy not found" in reason:  # 1.x answers 500, which is no outage
            raise _NotFound(f"InfluxDB at {self.url}: {reason}")
        if response.status_code == 404 and self.create_database and policy == self.retention_policy:
            self._database_ready = False  # dropped behind our back: create it again
        raise self._status_error(response.status_code, reason)

    async def _create_database(self) -> None:
        # Idempotent in InfluxQL. A write-only user may not create databases (the compose file
        # sets one up that way) and 2.x/3.x create them their own way: a refusal is logged and
        # writing goes ahead; a database really missing answers 404 on /write, which holds data.
        statement = create_database_statement(self.database)
        response = await self._request("POST", "query", params={"q": statement})
        if response.status_code >= 500 or response.status_code == 429:
            raise self._status_error(response.status_code, _server_reason(response))
        error = _statement_error(response) if response.is_success else _server_reason(response)
        if error is not None:
            log.warning(
                "InfluxDB at %s: could not create database %r (%s); writing to it anyway",
                self.url,
                self.database,
                error,
            )
        for policy in sorted(set(self.retention_policies.values())):
            statement = create_rollup_policy_statement(self.database, policy)
            response = await self._request("POST", "query", params={"q": statement})
            if response.status_code >= 500 or response.status_code == 429:
                raise self._status_error(response.status_code, _server_reason(response))
            error = _statement_error(response) if response.is_success else _server_reason(response)
            if error is not None and "already exists" not in error:
                log.warning(
                    "InfluxDB at %s: could not create retention policy %r (%s)",
                    self.url,
                    policy,
                    error,
                )
        self._database_ready = True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str],
        content: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        if self._http is None:
            raise RuntimeError("use the sink inside `async with InfluxDBSink(...) as sink:`")
        key = (path, tuple(params.items()))
        url = self._urls.get(key)
        if url is None:
            url = httpx.URL(f"{self.url}/{path}", params=params)
            if path == "write":  # a handful: one per retention policy
                self._urls[key] = url
        request = httpx.Request(
            method,
            url,
            content=content,
            headers=self._headers if headers is None else self._headers | headers,
            extensions=self._extensions,
        )
        try:
            response = await self._http.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        except httpx.TimeoutException as exc:
            allowed = self.timeout
            if isinstance(self._http, Http1Transport):  # time for the body's size too
                allowed += len(content) / self._http.slow_link
            raise RetryableWriteError(
                f"InfluxDB at {self.url}: no answer within {allowed:.3g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise RetryableWriteError(
                f"InfluxDB at {self.url}: {type(exc).__name__}: {exc or 'connection failed'}"
            ) from exc

    def _status_error(self, status: int, reason: str) -> WriteError:
        where = f"InfluxDB at {self.url}"
        if status == 401:
            return AuthWriteError(
                f"{where}: authentication failed (401: {reason}); check username/password or token"
            )
        if status == 403:
            return AuthWriteError(
                f"{where}: not allowed to write to database {self.database!r} (403: {reason})"
            )
        if status == 404:
            return _NotFound(
                f"{where}: database {self.database!r} not found (404: {reason}); "
                "create it or set create_database"
            )
        # 5xx, 429 and anything unexpected: hold the data and try again, never drop it.
        return RetryableWriteError(f"{where}: HTTP {status}: {reason}")


def _escaped_measurement(name: str) -> str:
    return name.replace(",", "\\,").replace(" ", "\\ ")


def _server_reason(response: httpx.Response) -> str:
    # 1.x and 3.x answer {"error": ...}, 2.x {"code": ..., "message": ...}.
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    text = response.text.strip()
    return text[:300] if text else response.reason_phrase


def _statement_error(response: httpx.Response) -> str | None:
    try:
        results = response.json()["results"]
        error = results[0].get("error")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return f"unexpected answer {response.text[:300]!r}"
    return None if error is None else str(error)
