"""`push_dashboards` against a stand-in for Grafana's HTTP API.

The stand-in is not Grafana: Grafana cannot be installed on the development machines (no Grafana
package repository is reachable, no Docker engine runs). It is a small stdlib HTTP server on a
free loopback port that answers the four requests the push makes the way Grafana's HTTP API
documentation describes them (GET /api/folders/{uid}: 404 when missing; POST /api/folders;
POST /api/dashboards/db: {id, uid, url, status, version}; 401 for any other token), keeps what
it was sent, and so lets the tests check the requests the push puts on the wire.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from dashboards.push import PushError, PushResult, push_dashboards
from tests.services import free_port

TOKEN = "glsa_test_token"
DASHBOARDS: list[dict[str, Any]] = [
    {"uid": "aguante-floor", "title": "Planta", "id": 7, "panels": []},
    {"uid": "aguante-machine", "title": "Máquina", "panels": []},
]


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class StandIn:
    """Grafana's state as far as the push sees it, and every request it was sent."""

    url: str
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    folder_api: bool = True  # False: a Grafana from before the folder API

    def answer(self, request: Request) -> tuple[int, Any]:
        self.requests.append(request)
        if request.authorization != f"Bearer {TOKEN}":
            return 401, {"message": "Unauthorized"}
        if request.path.startswith("/api/folders") and not self.folder_api:
            return 404, {"message": "Not found"}
        if request.method == "GET" and request.path.startswith("/api/folders/"):
            uid = request.path.removeprefix("/api/folders/")
            if uid not in self.folders:
                return 404, {"message": "folder not found", "status": "not-found"}
            return 200, self.folders[uid]
        if request.method == "POST" and request.path == "/api/folders":
            uid, title = request.body["uid"], request.body["title"]
            self.folders[uid] = {"id": len(self.folders) + 1, "uid": uid, "title": title}
            return 200, self.folders[uid]
        if request.method == "POST" and request.path == "/api/dashboards/db":
            return self._save_dashboard(request.body)
        return 404, {"message": "Not found"}

    def _save_dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body["folderUid"] not in self.folders:
            return 400, {"message": "folder not found"}
        model = body["dashboard"]
        uid = model["uid"]
        if uid in self.dashboards and not body["overwrite"]:
            return 412, {"message": "A dashboard with the same uid already exists"}
        version = self.dashboards.get(uid, {}).get("version", 0) + 1
        self.dashboards[uid] = {"model": model, "folderUid": body["folderUid"], "version": version}
        return 200, {
            "id": list(self.dashboards).index(uid) + 1,
            "uid": uid,
            "url": f"/d/{uid}/{model['title'].lower()}",
            "status": "success",
            "version": version,
        }


@pytest.fixture
def grafana() -> Iterator[StandIn]:
    port = free_port()
    stand_in = StandIn(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request a connection, so this one-threaded server never waits on an
        # idle keep-alive connection.
        def do_GET(self) -> None:
            self._handle(None)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._handle(json.loads(self.rfile.read(length)) if length else None)

        def _handle(self, body: Any) -> None:
            request = Request(self.command, self.path, self.headers.get("Authorization"), body)
            status, answer = stand_in.answer(request)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="grafana stand-in")
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_it_creates_the_folder_and_stores_every_dashboard_in_it(grafana: StandIn) -> None:
    results = push_dashboards(grafana.url, TOKEN, DASHBOARDS)

    assert results == [
        PushResult(
            "aguante-floor", "Planta", f"{grafana.url}/d/aguante-floor/planta", 1, "aguante"
        ),
        PushResult(
            "aguante-machine", "Máquina", f"{grafana.url}/d/aguante-machine/máquina", 1, "aguante"
        ),
    ]
    assert [(r.method, r.path) for r in grafana.requests] == [
        ("GET", "/api/folders/aguante"),
        ("POST", "/api/folders"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
    ]
    assert {r.authorization for r in grafana.requests} == {f"Bearer {TOKEN}"}
    assert grafana.requests[1].body == {"title": "aguante", "uid": "aguante"}
    for request, dashboard in zip(grafana.requests[2:], DASHBOARDS, strict=True):
        assert request.body["folderUid"] == "aguante"
        assert request.body["overwrite"] is True
        assert request.body["message"]
        # The model as given, but without another Grafana's numeric id.
        assert request.body["dashboard"] == dashboard | {"id": None}
    assert DASHBOARDS[0]["id"] == 7  # the caller's model is left as it was


def test_a_second_push_finds_the_folder_and_replaces_the_dashboards(grafana: StandIn) -> None:
    push_dashboards(grafana.url, TOKEN, DASHBOARDS)
    grafana.requests.clear()

    results = push_dashboards(grafana.url, TOKEN, DASHBOARDS)

    assert [(r.method, r.path) for r in grafana.requests] == [
        ("GET", "/api/folders/aguante"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
    ]
    assert [r.version for r in results] == [2, 2]
    assert list(grafana.folders) == ["aguante"]
    assert sorted(grafana.dashboards) == ["aguante-floor", "aguante-machine"]


def test_its_own_folder_uid_and_title(grafana: StandIn) -> None:
    push_dashboards(
        grafana.url, TOKEN, DASHBOARDS[:1], folder_uid="planta-2", folder_title="Planta 2"
    )
    assert grafana.folders["planta-2"]["title"] == "Planta 2"
    assert grafana.dashboards["aguante-floor"]["folderUid"] == "planta-2"


def test_a_wrong_token_is_named(grafana: StandIn) -> None:
    with pytest.raises(PushError) as caught:
        push_dashboards(grafana.url, "glsa_wrong", DASHBOARDS)
    assert str(caught.value) == (
        f"Grafana at {grafana.url} refused the token (401 reading folder aguante): check "
        "AGUANTE_GRAFANA_TOKEN; it must be a valid service account token of this Grafana"
    )
    assert [r.path for r in grafana.requests] == ["/api/folders/aguante"]  # nothing more sent
    assert grafana.requests[0].authorization == "Bearer glsa_wrong"


def test_a_grafana_without_the_folder_api_is_too_old(grafana: StandIn) -> None:
    grafana.folder_api = False
    with pytest.raises(PushError) as caught:
        push_dashboards(grafana.url, TOKEN, DASHBOARDS)
    assert str(caught.value) == (
        f"Grafana at {grafana.url} has no folder API (404 on /api/folders): it is too old; "
        "aguante's dashboards need Grafana 8 or newer"
    )


def test_a_grafana_that_is_not_there_is_named_by_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PushError) as caught:
        push_dashboards(url, TOKEN, DASHBOARDS)
    message = str(caught.value)
    assert message.startswith(f"cannot reach Grafana at {url} (reading folder aguante): ")
    assert message.endswith("; is it running, and is the URL right?")


def test_no_token_and_no_uid_are_refused_before_any_request(grafana: StandIn) -> None:
    with pytest.raises(PushError, match="set AGUANTE_GRAFANA_TOKEN to a service account token"):
        push_dashboards(grafana.url, "", DASHBOARDS)
    with pytest.raises(ValueError, match=r"dashboard 1 \('Sin uid'\) has no uid"):
        push_dashboards(grafana.url, TOKEN, [{"title": "Sin uid"}])
    assert grafana.requests == []
