"""`aguante init` driven through a real terminal (pexpect): a worker's answers, wrong ones among
them, become a factory file that `aguante check` passes and that `aguante collect` reads the
metalworks simulators with — a meter through its profile, a PLC through registers pasted from
`aguante probe find`, a Tasmota plug over MQTT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pexpect
import pytest
import yaml

from collector.config import load_config
from simulators import load_scenario, run_scenario
from tests.conftest import InfluxDBDatabase
from tests.services import Mosquitto
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir

AGUANTE = str(Path(sys.executable).parent / "aguante")
ROOT = Path(__file__).parent.parent


def _session(path: Path, port_base: int, influxdb: InfluxDBDatabase, mqtt_url: str) -> str:
    child = pexpect.spawn(
        AGUANTE,
        ["init", str(path), "--lang", "pt-BR"],
        encoding="utf-8",
        timeout=30,
        cwd=str(path.parent),
        env={**os.environ, "COLUMNS": "200"},
    )
    steps = [
        ("Nome da fábrica", "Cooperativa Unión"),  # a space: refused, asked again
        ("use só letras", None),
        ("Nome da fábrica", "cooperativa-union"),
        ("Fuso horário", "America/Marte"),
        ("não é um fuso horário", None),
        ("Fuso horário", "America/Sao_Paulo"),
        ("Endereço do InfluxDB", influxdb.url),
        ("Banco de dados do InfluxDB", influxdb.database),
        ("Setores da fábrica", "prensagem, usinagem"),
        ("Nome do turno", "manhã"),
        ("Dias em que começa", ""),
        ("Começa às", "6h"),
        ("escreva a hora como HH:MM", None),
        ("Começa às", "06:00"),
        ("Termina às", "14:00"),
        ("Nome do turno", ""),
        # A meter through its profile, behind the serial gateway.
        ("Identificador da máquina", "lathe-1"),
        ("Como a chamam", "Torno"),
        ("Seu setor", "2"),
        ("Como o aguante a lê", "1"),
        ("Qual perfil", "eastron-sdm120"),
        ("Conexão", "2"),
        ("Endereço do CLP ou gateway", "127.0.0.1"),
        ("Porta TCP", str(port_base + 3)),
        ("Endereço da unidade", "1"),
        ("Qual sinal diz que está funcionando", "power"),
        ("Funcionando quando power está acima de", "200"),
        # The press's PLC through what `aguante probe find` printed.
        ("Identificador da máquina", "lathe-1"),  # already used: refused
        ("já está em uso", None),
        ("Identificador da máquina", "press-1"),
        ("Como a chamam", ""),
        ("Seu setor", "prensagem"),
        ("Como o aguante a lê", "2"),
        ("Conexão", "tcp"),
        ("Endereço do CLP ou gateway", "127.0.0.1"),
        ("Porta TCP", str(port_base)),
        ("Endereço da unidade", ""),
        ("Sinal", "- {name: value, table: holding, address: 1, type: int16, scale: 0.1}"),
        ("Nome para guardá-lo", "oil_temp"),
        ("Sinal", "holding 0"),  # neither a pasted line nor a spec
        ("Cole uma linha", None),
        ("Sinal", "strokes=holding:0"),
        ("Sinal", "running=coil:0"),
        ("Sinal", ""),
        ("Qual sinal diz que está funcionando", "running"),
        # A drill seen only through its Tasmota plug.
        ("Identificador da máquina", "drill-1"),
        ("Como a chamam", ""),
        ("Seu setor", "usinagem"),
        ("Como o aguante a lê", "3"),
        ("Firmware da placa", "tasmota"),
        ("Seu topic do Tasmota", "drill-1-plug"),
        ("Qual sinal diz que está funcionando", "1"),
        ("Funcionando quando power está acima de", "30,5"),
        ("Identificador da máquina", ""),
        ("Endereço do broker MQTT", mqtt_url),
    ]
    for prompt, answer in steps:
        child.expect_exact(prompt)
        if answer is not None:
            child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    output = child.before or ""
    assert child.exitstatus == 0, output
    return output


@pytest.mark.integration
async def test_init_writes_a_config_that_collects_from_the_simulators(
    influxdb: InfluxDBDatabase, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    influxdb.create()
    port_base = free_port_base(8)
    path = tmp_path / "factory.yaml"
    output = _session(path, port_base, influxdb, mosquitto.url)
    assert "ok — 3 machines" in output

    config = load_config(path)
    assert config.factory == "cooperativa-union" and config.language == "pt-BR"
    assert [s.id for s in config.sectors] == ["prensagem", "usinagem"]
    shift = config.calendar.shifts[0]
    assert (shift.name, str(shift.start)[:5], str(shift.end)[:5]) == ("manhã", "06:00", "14:00")
    lathe, press, drill = config.machines
    assert lathe.modbus is not None and lathe.modbus.profile == "eastron-sdm120"
    assert lathe.state is not None and lathe.state.running.above == 200
    assert press.modbus is not None
    assert {s.name: (s.wire_address, s.type, s.scale) for s in press.modbus.signals} == {
        "oil_temp": (1, "int16", 0.1),
        "strokes": (0, "uint16", 1.0),
        "running": (0, "bool", 1.0),
    }
    assert drill.mqtt[0].format == "tasmota" and drill.state is not None
    assert drill.state.running.above == 30.5
    # The file reads as the worker's own: a comment saying how to check it, no defaults spelt out.
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Arquivo da fábrica escrito pelo aguante init")
    assert "buffer" not in yaml.safe_load(text)

    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    async with run_scenario(
        scenario, port_base=port_base, start=MONDAY_MORNING, mqtt_url=mosquitto.url, board_period=1
    ):
        process = await asyncio.create_subprocess_exec(
            AGUANTE,
            "collect",
            str(path),
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):
                while True:
                    rows = influxdb.query("SELECT count(*) FROM reading GROUP BY machine")
                    if {row["machine"] for row in rows} == {"lathe-1", "press-1", "drill-1"}:
                        break
                    await asyncio.sleep(0.5)
        finally:
            process.send_signal(signal.SIGINT)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    fields = influxdb.query("SELECT * FROM reading WHERE machine = 'press-1' LIMIT 1")[0]
    assert fields["strokes"] >= 0 and isinstance(fields["running"], bool)
    lathe_row = influxdb.query("SELECT voltage FROM reading WHERE machine = 'lathe-1' LIMIT 1")
    assert 200 < lathe_row[0]["voltage"] < 250  # the simulated meter's line voltage


def test_init_stops_without_writing_at_end_of_input(tmp_path: Path) -> None:
    path = tmp_path / "factory.yaml"
    child = pexpect.spawn(
        AGUANTE, ["init", str(path), "--lang", "en"], encoding="utf-8", timeout=30
    )
    child.expect_exact("Name of the factory")
    child.sendline("coop")
    child.expect_exact("Time zone")
    child.sendeof()
    child.expect_exact("Stopped: nothing was written.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert not path.exists()
