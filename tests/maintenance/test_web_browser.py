"""A crew member in Spanish, in headless Chromium (Debian's), against the app served by uvicorn
on a free port: log in, ticket list, ticket, acknowledge, start, note, resolve; and a worker
giving a stop its reason. Screenshots are kept under the test's tmp_path."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright

from collector.schema import STOP
from tests.maintenance.test_web import ANA, ROSA, Plant, build_plant

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (Debian package `chromium`)"
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Plant, str]]:
    """The app on uvicorn in a thread; stopped and joined at the end (no thread left)."""
    for plant in build_plant(tmp_path):
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(plant.app, host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
            time.sleep(0.02)
        try:
            yield plant, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(10)
            assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def _log_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/tickets")
    assert page.locator("h1").inner_text() == "Entrar con tu código"
    page.get_by_label("Código").fill(token)
    page.get_by_role("button", name="Entrar").click()


def test_crew_member_resolves_a_ticket_in_spanish(
    served: tuple[Plant, str], browser: Browser, tmp_path: Path
) -> None:
    plant, base = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = browser.new_context(locale="es-AR", viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        _log_in(page, base, ROSA)
        page.wait_for_url(f"{base}/tickets")
        assert page.locator("h1").inner_text() == "Tickets"
        assert "Conectado como Rosa" in page.locator("header").inner_text()
        page.screenshot(path=shots / "1-lista.png", full_page=True)

        page.get_by_label("Sector").select_option("pressing")
        page.get_by_role("button", name="Filtrar").click()
        page.get_by_role("link", name=f"#{plant.pressing} press-1").click()
        page.wait_for_url(f"{base}/tickets/{plant.pressing}")
        assert page.locator("#status").inner_text() == "abierto"
        assert "1.236,5" in page.content()
        page.screenshot(path=shots / "2-ticket.png", full_page=True)

        page.get_by_role("button", name="Confirmar recepción").click()
        assert page.locator("#status").inner_text() == "recibido"
        page.get_by_role("button", name="Empezar el trabajo").click()
        assert page.locator("#status").inner_text() == "en curso"

        page.get_by_label("Nota", exact=True).fill("Cambié el rodamiento del lado motor")
        page.get_by_label("Repuestos usados").fill("rodamiento 6204")
        page.get_by_label("Minutos de trabajo").fill("45")
        page.get_by_role("button", name="Guardar nota").click()
        assert "Cambié el rodamiento del lado motor" in page.locator("tr.note").inner_text()
        page.screenshot(path=shots / "3-nota.png", full_page=True)

        page.get_by_label("Nota de cierre (opcional)").fill("Probada, anda bien")
        page.get_by_role("button", name="Marcar resuelto").click()
        assert page.locator("#status").inner_text() == "resuelto"
        page.screenshot(path=shots / "4-resuelto.png", full_page=True)
    finally:
        context.close()
    ticket = plant.store.get(plant.pressing)
    assert (ticket.status, ticket.resolved_ms is not None) == ("resolved", True)
    notes = plant.store.notes(plant.pressing)
    assert [(n.actor, n.parts, n.minutes) for n in notes] == [
        ("Rosa", "rodamiento 6204", 45),
        ("Rosa", None, None),
    ]
    print(f"screenshots: {shots}")


def test_worker_gives_a_stop_its_reason_in_spanish(
    served: tuple[Plant, str], browser: Browser, tmp_path: Path
) -> None:
    plant, base = served
    reason = plant.config.stop_reasons[0]
    context = browser.new_context(locale="es-AR", viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        _log_in(page, base, ANA)
        page.wait_for_url(f"{base}/tickets")
        page.get_by_role("link", name="Paradas").click()
        assert page.locator("h1").inner_text() == "Paradas recientes"
        page.get_by_label("Motivo").select_option(reason.id)
        page.get_by_role("button", name="Guardar").click()
        page.wait_for_url(f"{base}/stops?sector=pressing&hours=24")
        page.screenshot(path=tmp_path / "parada.png", full_page=True)
    finally:
        context.close()
    assert [p.fields for p in plant.sink.points if p.measurement == STOP] == [{"reason": reason.id}]
    print(f"screenshot: {tmp_path / 'parada.png'}")
