"""The `aguante` command line as a user runs it: a real process, its exit code and its output."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from simulators import load_scenario, run_scenario
from tests.conftest import InfluxDBDatabase
from tests.simulation import MONDAY_MORNING, free_port_base, with_pty_dir
from tests.test_end_to_end import example_config

# The console script pip installed, as a user runs it.
AGUANTE = [str(Path(sys.executable).parent / "aguante")]
ROOT = Path(__file__).parent.parent
GOLDEN = ROOT / "tests" / "golden" / "config"


def aguante(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGUANTE, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


COMMANDS = [
    "check",
    "schema",
    "collect",
    "buffer",
    "simulate",
    "kpi",
    "stops",
    "import",
    "rollup",
    "maintenance",
    "db",
    "dashboards",
    "report",
    "decision",
    "probe",
    "profiles",
    "init",
    "share",
    "network",
]


def test_the_command_list_is_complete() -> None:
    from collector.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(commands.choices) == sorted(COMMANDS)


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_every_command_has_help(command: list[str]) -> None:
    result = aguante(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: aguante")
    assert result.stderr == ""


def test_check_accepts_the_example() -> None:
    result = aguante("check", "examples/metalworks.yaml")
    assert result.returncode == 0
    assert result.stdout.startswith("examples/metalworks.yaml: ok — ")
    assert "41 Modbus signals" in result.stdout


def test_check_prints_every_problem_and_exits_1() -> None:
    path = GOLDEN / "overlapping-registers" / "config.yaml"
    result = aguante("check", str(path))
    assert result.returncode == 1
    expected = (GOLDEN / "overlapping-registers" / "expected.txt").read_text().strip()
    assert result.stderr == f"{path}: 1 problem(s)\n  {expected}\n"


def test_schema_is_json_for_editors() -> None:
    result = aguante("schema")
    assert result.returncode == 0
    assert json.loads(result.stdout)["title"] == "aguante factory config"


@pytest.mark.integration
@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_collect_runs_until_sigint_and_flushes(
    influxdb: InfluxDBDatabase, tmp_path: Path, event_loop: str
) -> None:
    influxdb.create()
    port_base = free_port_base(8)
    scenario = with_pty_dir(load_scenario("metalworks"), tmp_path)
    config = example_config(port_base, tmp_path, influxdb.url, influxdb.database)
    config_path = tmp_path / "factory.yaml"
    config_path.write_text(
        yaml.safe_dump(config.model_dump(mode="json", by_alias=True, exclude_none=True))
    )
    async with run_scenario(scenario, port_base=port_base, start=MONDAY_MORNING, frozen=True):
        process = await asyncio.create_subprocess_exec(
            *AGUANTE,
            "collect",
            str(config_path),
            f"--event-loop={event_loop}",
            cwd=tmp_path,
            env=os.environ | {"PYTHONPATH": str(ROOT)},
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(3)
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "collector stopped" in log
    assert f"(event loop: {event_loop})" in log
    assert "Traceback" not in log
    machines = influxdb.query("SELECT count(*) FROM reading GROUP BY machine")
    assert {row["machine"] for row in machines} == {m.id for m in config.machines}
    health = influxdb.query("SELECT last(written) AS written FROM collector")
    assert health[0]["written"] > 0


def test_a_factory_without_mqtt_loads_no_mqtt_client() -> None:
    # paho, protobuf (Sparkplug) and the payload parsers are about 4 MiB a plant of PLCs only
    # does not need; a board added to the file brings them in.
    code = textwrap.dedent(
        """
        import asyncio, sys
        from collector.config import parse_config
        from collector.sources import build_sources
        text = (
            "factory: coop\\nsectors: [{id: s}]\\nmachines:\\n  - id: m\\n    sector: s\\n"
            "    modbus: {host: 127.0.0.1, port: 5020,"
            " signals: [{name: v, table: holding, address: 0}]}\\n"
        )
        board = text + "    mqtt: [{topic: a/b, format: plain, signals: [{name: w}]}]\\n"
        async def kinds(text):
            return [source.kind for source in build_sources(parse_config(text, environ={}))]
        modbus_only = asyncio.run(kinds(text))
        print(modbus_only, [m for m in ("paho", "google.protobuf") if m in sys.modules])
        print(asyncio.run(kinds(board)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["['modbus'] []", "['modbus', 'mqtt']"], done.stdout


def test_collect_loads_no_other_packages_command() -> None:
    # `collect` runs for months: the simulators', dashboards' and maintenance's commands (and
    # the packages they import) stay out of its memory.
    code = (
        "import sys\n"
        "from collector import cli\n"
        "try:\n"
        "    cli.main(['--log-level', 'DEBUG', 'collect', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import collector.sinks.influxdb\n"
        "print(sorted(p for p in ('simulators', 'dashboards', 'maintenance', 'rich', 'pygments',"
        " 'babel')"
        " if p in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # rich and pygments: httpx's own command line, which it loads when they are installed (the
    # test tools install them) unless told not to.
    assert done.stdout.strip().splitlines()[-1] == "[]"
