"""`make demo`: the whole system on simulated machines, with private services under `.demo/`.

Starts InfluxDB and Mosquitto (Debian's binaries, data under .demo/), the `metalworks`
simulation and the collector reading it; prints what to look at; Ctrl-C stops all of it.
The service launcher is the one the integration tests use, so the demo and the tests agree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import InfluxDB, free_port  # noqa: E402

DEMO = ROOT / ".demo"
CONFIG = ROOT / "examples" / "metalworks.yaml"
AGUANTE = str(Path(sys.executable).parent / "aguante")


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _mosquitto(port: int) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        print("mosquitto not found; the MQTT part of the demo is skipped")
        return None
    folder = DEMO / "mosquitto"
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n"
    )
    return subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL)


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    influx = InfluxDB(DEMO / "influxdb")
    influx.http_port = _port(8086)
    influx.url = f"http://127.0.0.1:{influx.http_port}"
    influx.start()
    mqtt_port = _port(1884)
    children: list[subprocess.Popen[bytes]] = []
    mosquitto = _mosquitto(mqtt_port)
    if mosquitto is not None:
        children.append(mosquitto)
    env = os.environ | {"AGUANTE_INFLUXDB_URL": influx.url, "AGUANTE_INFLUXDB_DATABASE": "aguante"}
    children.append(subprocess.Popen([AGUANTE, "simulate", "metalworks"], cwd=DEMO))
    time.sleep(1.0)  # let the simulated devices listen before the first poll
    children.append(subprocess.Popen([AGUANTE, "collect", str(CONFIG)], cwd=DEMO, env=env))
    query = "SELECT last(*) FROM reading WHERE time > now() - 1m GROUP BY machine"
    print(
        f"""
aguante demo running — Ctrl-C stops everything it started.

  InfluxDB   {influx.url}   database "aguante"   (data in .demo/influxdb)
  Mosquitto  127.0.0.1:{mqtt_port}                 (data in .demo/mosquitto)
  machines   aguante simulate metalworks       (faults: see docs/simulators.md)
  collector  aguante collect examples/metalworks.yaml

Live values, newest per machine:
  curl -sG {influx.url}/query --data-urlencode db=aguante \\
       --data-urlencode "q={query}"
or:  influx -port {influx.http_port} -database aguante -execute '{query}'
Collector health:  ... -execute 'SELECT last(*) FROM collector GROUP BY machine'
""",
        flush=True,
    )
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"{child.args} exited with {child.returncode}; stopping the demo")
                    stopping = True
            time.sleep(0.5)
    finally:
        for child in reversed(children):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)
        for child in reversed(children):
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
        influx.stop()
        print("demo stopped; data kept in .demo/ (make clean removes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
