"""Reading the plant's data back: InfluxQL over the v1 `/query` endpoint, for commands, KPIs,
reports and the maintenance service.

Only the InfluxQL subset that 1.x, 2.x (v1 compatibility) and 3.x all serve is used by callers;
identifiers and strings are quoted here so no caller builds a query from raw names.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from collector.config import InfluxDBConfig

__all__ = [
    "STATEMENTS_PER_REQUEST",
    "InfluxQL",
    "QueryError",
    "Series",
    "quote_ident",
    "quote_string",
    "regex_any",
    "time_literal",
]


# Statements sent in one request by `query_each`: a year by day is a few hundred kilobytes.
STATEMENTS_PER_REQUEST = 100


class QueryError(Exception):
    """A query could not be answered: the message names the server and the reason."""


@dataclass(frozen=True, slots=True)
class Series:
    """One series of a statement's answer: rows as dicts, times in UTC milliseconds."""

    name: str
    tags: Mapping[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(text: str) -> str:
    """An InfluxQL single-quoted string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def regex_any(values: Sequence[str]) -> str:
    """A /^(a|b)$/ regex literal matching exactly these tag values."""
    escaped = []
    for value in values:
        # Every character but letters, digits, _ and - escaped: `.` and `/` included.
        escaped.append("".join(c if c.isalnum() or c in "_-" else "\\" + c for c in value))
    return "/^(" + "|".join(escaped) + ")$/"


def time_literal(moment: dt.datetime | int) -> str:
    """A time bound: an aware datetime or UTC milliseconds, as nanoseconds since the epoch."""
    if isinstance(moment, dt.datetime):
        if moment.tzinfo is None:
            raise ValueError("time bounds must be aware datetimes")
        return f"{round(moment.timestamp() * 1000) * 1_000_000}"
    return f"{moment * 1_000_000}"


class InfluxQL:
    """A synchronous InfluxQL client: `with InfluxQL.from_config(cfg) as db: db.query(q)`."""

    def __init__(
        self,
        url: str,
        database: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        headers = {"Authorization": f"Token {token}"} if token else {}
        auth = (username, password or "") if username else None
        self._client = httpx.Client(
            base_url=self.url, headers=headers, auth=auth, timeout=timeout, transport=transport
        )

    @classmethod
    def from_config(cls, influx: InfluxDBConfig, **kwargs: Any) -> Self:
        return cls(
            influx.url,
            influx.database,
            username=influx.username,
            password=influx.password,
            token=influx.token,
            **kwargs,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def query(self, statements: str) -> list[list[Series]]:
        """Run one or more `;`-separated statements; one list of series per statement."""
        try:
            response = self._client.post(
                "/query",
                params={"db": self.database, "epoch": "ms"},
                data={"q": statements},
            )
        except httpx.TransportError as exc:
            raise QueryError(
                f"InfluxDB at {self.url}: {type(exc).__name__}: {exc or 'connection failed'}"
            ) from exc
        try:
            body = response.json()
        except json.JSONDecodeError:
            body = None
        if not response.is_success or not isinstance(body, dict) or "results" not in body:
            reason = body.get("error") or body.get("message") if isinstance(body, dict) else None
            raise QueryError(
                f"InfluxDB at {self.url}: HTTP {response.status_code}: "
                f"{reason or response.text[:300] or response.reason_phrase}"
            )
        answers: list[list[Series]] = []
        for result in body["results"]:
            if "error" in result:
                raise QueryError(f"InfluxDB at {self.url}: {result['error']}")
            answers.append(
                [
                    Series(
                        s["name"],
                        s.get("tags") or {},
                        [dict(zip(s["columns"], row, strict=True)) for row in s["values"]],
                    )
                    for s in result.get("series", [])
                ]
            )
        return answers

    def select(self, statement: str) -> list[Series]:
        """Run one statement; its series."""
        (answer,) = self.query(statement)
        return answer

    def query_each(
        self, statements: Sequence[str], *, per_request: int = STATEMENTS_PER_REQUEST
    ) -> list[list[Series]]:
        """One answer per statement, in as few requests as the server takes: many statements per
        request on InfluxDB 1.x and 2.x, one by one on a server that answers only the first or
        refuses several (the v1 API of InfluxDB 3). After a failed statement InfluxDB 1.x runs
        none of the next ones and may blame another, so a failed request is run again statement
        by statement: the error raised is the failing statement's own."""
        answers: list[list[Series]] = []
        first = 0
        while first < len(statements):
            chunk = statements[first : first + per_request]
            try:
                answer = self.query(";\n".join(chunk))
            except QueryError:
                if len(chunk) == 1:
                    raise
                answer = self.query_each(chunk, per_request=1)
            if len(answer) != len(chunk):
                if len(chunk) == 1:
                    raise QueryError(
                        f"InfluxDB at {self.url}: {len(answer)} answers to one statement"
                    )
                per_request = 1
                continue
            answers += answer
            first += len(chunk)
        return answers
