"""What ships around the code: exported names, the compose file and the image it builds."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import collector
import simulators

ROOT = Path(__file__).parent.parent


def modules_with_all() -> list[ModuleType]:
    found = []
    for package in (collector, simulators):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            if hasattr(module, "__all__"):
                found.append(module)
    return found


@pytest.mark.parametrize("module", modules_with_all(), ids=lambda m: m.__name__)
def test_all_matches_what_the_module_defines(module: ModuleType) -> None:
    exported = set(module.__all__)
    missing = {name for name in exported if not hasattr(module, name)}
    assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module.__name__
    }
    assert defined <= exported, (
        f"{module.__name__} defines but does not export {defined - exported}"
    )


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_runs_influxdb_mosquitto_the_collector_and_the_demo() -> None:
    services = compose()["services"]
    assert {"influxdb", "mosquitto", "collector", "simulators"} <= set(services)
    assert services["collector"]["environment"]["AGUANTE_MQTT_URL"] == "mqtt://mosquitto:1883"
    for volume in services["mosquitto"]["volumes"]:
        source = volume.split(":", 1)[0]
        assert not source.startswith("./") or (ROOT / source).exists(), volume
    assert services["collector"]["command"][0] == "collect"
    assert services["simulators"]["profiles"] == ["demo"]
    # Secrets only from .env: tests/test_deploy.py::test_secrets_come_only_from_the_env_file.


def test_compose_mounts_a_config_that_exists_and_passes_check() -> None:
    from collector.config import load_config

    volume = compose()["services"]["collector"]["volumes"][0]
    default = re.match(r"\$\{AGUANTE_CONFIG:-(?P<path>[^}]+)\}:", volume)
    assert default is not None
    load_config(ROOT / default["path"], environ={})


def test_dockerfile_copies_what_exists() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), line


def test_the_wheel_carries_every_file_the_code_reads(tmp_path: Path) -> None:
    # The image installs the package (not the source tree): translations, page templates and
    # scenarios must be in the wheel, or the report and every translated text fail there only.
    import subprocess
    import sys
    import zipfile

    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("aguante-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    # Every file of the packages but their code, less what serves Grafana's provisioning from
    # the repository (docker-compose.yml mounts it; no aguante command reads it installed).
    tracked = subprocess.run(
        ["git", "ls-files", "collector", "dashboards", "maintenance", "simulators"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout.split()
    for_grafana = ("dashboards/grafana/", "dashboards/provisioning/")
    wanted = {
        name for name in tracked if not name.endswith(".py") and not name.startswith(for_grafana)
    }
    assert {
        "dashboards/templates/report.html",
        "collector/locales/es/LC_MESSAGES/report.po",
    } <= wanted
    assert wanted - shipped == set(), "add them to [tool.setuptools.package-data]"
