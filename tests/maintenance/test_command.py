"""`aguante maintenance` as a person runs it: a token made with --new-token, the rules' loop and
the web app served side by side, a log-in that works, and Ctrl-C that stops both cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import InfluxDBDatabase
from tests.maintenance import seed
from tests.services import free_port

pytestmark = pytest.mark.integration

AGUANTE = str(Path(sys.executable).parent / "aguante")
ROOT = Path(__file__).parents[2]


def write_config(tmp_path: Path, influxdb: InfluxDBDatabase, port: int) -> Path:
    rule = {
        "id": "hot",
        "machines": ["press-1"],
        "threshold": {"signal": "temperature", "above": 80},
    }
    config = seed.plant(influxdb.url, influxdb.database, rule)
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["maintenance"] |= {
        "interval": 5,
        "store": f"sqlite:///{tmp_path / 'tickets.db'}",
        "crews": [{"id": "mecanica", "sectors": [seed.SECTOR]}],
        "web": {"host": "127.0.0.1", "port": port, "tokens_file": str(tmp_path / "tokens.yaml")},
    }
    path = tmp_path / "factory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_new_token_then_serve_and_stop(influxdb: InfluxDBDatabase, tmp_path: Path) -> None:
    influxdb.create()
    port = free_port()
    config = write_config(tmp_path, influxdb, port)
    env = os.environ | {"PYTHONPATH": str(ROOT), "AGUANTE_SECRET_KEY": "s" * 32}
    made = subprocess.run(
        [AGUANTE, "maintenance", str(config), "--new-token", "Ana", "--crew", "mecanica"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 16
    assert (tmp_path / "tokens.yaml").stat().st_mode & 0o077 == 0  # only its owner reads it
    refused = subprocess.run(
        [AGUANTE, "maintenance", str(config), "--new-token", "Beto", "--crew", "nadie"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "crew 'nadie' is not among the crews" in refused.stderr

    process = subprocess.Popen(
        [AGUANTE, "maintenance", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/login", timeout=1)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "the web app did not start"
                time.sleep(0.2)
        assert page.status_code == 200
        tickets = httpx.get(
            f"http://127.0.0.1:{port}/api/tickets",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert tickets.status_code == 200 and tickets.json() == []
        anonymous = httpx.get(f"http://127.0.0.1:{port}/api/tickets", timeout=5)
        assert anonymous.status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_without_a_secret_key_it_refuses_to_serve(
    influxdb: InfluxDBDatabase, tmp_path: Path
) -> None:
    config = write_config(tmp_path, influxdb, free_port())
    env = {k: v for k, v in os.environ.items() if k != "AGUANTE_SECRET_KEY"}
    result = subprocess.run(
        [AGUANTE, "maintenance", str(config)],
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "set AGUANTE_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
