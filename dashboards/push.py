"""Pushing aguante's dashboards into a Grafana a plant already runs, through Grafana's documented
HTTP API (`/api/folders`, `/api/dashboards/db`): into one folder of their own, replacing earlier
versions.

httpx speaks it, not the `grafana-client` package: grafana-client 4 and 5 bring niquests, whose
`urllib3-future` wheel replaces the `urllib3` package of the whole environment — too much to do
to a plant's box for three HTTP calls.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["TOKEN_VARIABLE", "PushError", "PushResult", "push_dashboards"]

TOKEN_VARIABLE = "AGUANTE_GRAFANA_TOKEN"
_MESSAGE = "pushed by aguante dashboards push"
_TIMEOUT_S = 10.0


class PushError(Exception):
    """Grafana could not be reached or refused: the message names its URL and the reason."""


@dataclass(frozen=True, slots=True)
class PushResult:
    """One dashboard as Grafana stored it: `url` is where to open it, `version` its new version."""

    uid: str
    title: str
    url: str
    version: int
    folder_uid: str


def push_dashboards(
    url: str,
    token: str,
    dashboards: Sequence[Mapping[str, Any]],
    *,
    folder_uid: str = "aguante",
    folder_title: str = "aguante",
) -> list[PushResult]:
    """Put `dashboards` (Grafana dashboard JSON models, each with its `uid`) into the folder
    `folder_uid` of the Grafana at `url`, creating the folder when it is missing and replacing
    any dashboard of the same uid. `token` is a service account token (sent as Bearer) with
    the Editor role. Raises `PushError` on the first failure."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise PushError(f"Grafana URL {url!r} must start with http:// or https://")
    if not token:
        raise PushError(
            f"no token for Grafana at {url}: set {TOKEN_VARIABLE} to a service account token "
            "with the Editor role"
        )
    for number, dashboard in enumerate(dashboards, 1):
        if not isinstance(dashboard.get("uid"), str) or not dashboard["uid"]:
            raise ValueError(f"dashboard {number} ({dashboard.get('title')!r}) has no uid")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=_TIMEOUT_S) as grafana:
        _ensure_folder(grafana, url, folder_uid, folder_title)
        return [_push(grafana, url, dashboard, folder_uid) for dashboard in dashboards]


class _Refused(Exception):
    """Grafana answered with an error status."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"{status_code} {reason}")
        self.status_code = status_code
        self.reason = reason


def _call(grafana: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    response = grafana.request(method, path, json=body)
    if not response.is_success:
        raise _Refused(response.status_code, _reason(response))
    try:
        return response.json()
    except ValueError:
        return None


def _ensure_folder(grafana: httpx.Client, url: str, uid: str, title: str) -> None:
    try:
        _call(grafana, "GET", f"/api/folders/{uid}")
        return
    except _Refused as exc:
        if exc.status_code != 404:
            raise _push_error(url, exc, "reading folder " + uid) from exc
    except httpx.HTTPError as exc:
        raise _push_error(url, exc, "reading folder " + uid) from exc
    try:
        _call(grafana, "POST", "/api/folders", {"uid": uid, "title": title})
    except _Refused as exc:
        if exc.status_code == 404:
            raise PushError(
                f"Grafana at {url} has no folder API (404 on /api/folders): it is too old; "
                "aguante's dashboards need Grafana 8 or newer"
            ) from exc
        if exc.status_code in (409, 412):
            raise PushError(
                f"Grafana at {url} refused to create folder {title!r} (uid {uid!r}): "
                f"{exc.reason}; a folder of that title may exist with another uid: "
                "rename it, or choose another folder title"
            ) from exc
        raise _push_error(url, exc, f"creating folder {title!r}") from exc
    except httpx.HTTPError as exc:
        raise _push_error(url, exc, f"creating folder {title!r}") from exc


def _push(
    grafana: httpx.Client, url: str, dashboard: Mapping[str, Any], folder_uid: str
) -> PushResult:
    model = copy.deepcopy(dict(dashboard))
    # Grafana's numeric id is its own: a model carrying one from another instance is refused.
    model["id"] = None
    body = {"dashboard": model, "folderUid": folder_uid, "overwrite": True, "message": _MESSAGE}
    try:
        answer = _call(grafana, "POST", "/api/dashboards/db", body)
    except (_Refused, httpx.HTTPError) as exc:
        raise _push_error(url, exc, f"storing dashboard {model['uid']!r}") from exc
    if not isinstance(answer, dict) or answer.get("status") != "success":
        raise PushError(
            f"Grafana at {url} did not store dashboard {model['uid']!r}: answered {answer!r}"
        )
    path = str(answer.get("url") or "")
    return PushResult(
        uid=str(answer.get("uid") or model["uid"]),
        title=str(model.get("title", "")),
        url=_absolute(url, path),
        version=int(answer.get("version") or 0),
        folder_uid=folder_uid,
    )


def _absolute(base: str, path: str) -> str:
    if not path or path.startswith(("http://", "https://")):
        return path
    # Grafana answers /d/uid/slug, including any sub-path it is served under.
    origin = urlsplit(base)
    return f"{origin.scheme}://{origin.netloc}{path}"


def _push_error(url: str, exc: Exception, doing: str) -> PushError:
    """The one translation of HTTP errors into a sentence for the person pushing."""
    if isinstance(exc, httpx.TimeoutException):
        return PushError(f"Grafana at {url} did not answer ({doing}): {exc}")
    if isinstance(exc, httpx.TransportError):
        return PushError(
            f"cannot reach Grafana at {url} ({doing}): {exc}; is it running, and is the URL right?"
        )
    if isinstance(exc, _Refused):
        if exc.status_code == 401:
            return PushError(
                f"Grafana at {url} refused the token (401 {doing}): check {TOKEN_VARIABLE}; "
                "it must be a valid service account token of this Grafana"
            )
        if exc.status_code == 403:
            return PushError(
                f"Grafana at {url} does not let the token do that (403 {doing}: {exc.reason}): "
                "give its service account the Editor role"
            )
        return PushError(f"Grafana at {url} answered {exc.status_code} {doing}: {exc.reason}")
    return PushError(f"Grafana at {url} ({doing}): {type(exc).__name__}: {exc}")


def _reason(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])
    return response.reason_phrase
