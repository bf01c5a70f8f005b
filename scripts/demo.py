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
# Children get their own process group so Ctrl-C reaches only this script, which then stops them
# in order: the collector first (it flushes into InfluxDB), InfluxDB last.
_OWN_GROUP: dict[str, bool] = {"start_new_session": True}


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
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to its own user, which must own its data folder.
        with contextlib.suppress(LookupError, OSError):
            shutil.chown(folder, "mosquitto")
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {folder}/\nlog_dest file {folder}/mosquitto.log\n"
    )
    return subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, **_OWN_GROUP)


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
    children.append(subprocess.Popen([AGUANTE, "simulate", "metalworks"], cwd=DEMO, **_OWN_GROUP))
    time.sleep(1.0)  # let the simulated devices listen before the first poll
    children.append(
        subprocess.Popen([AGUANTE, "collect", str(CONFIG)], cwd=DEMO, env=env, **_OWN_GROUP)
    )
    query = "SELECT * FROM reading WHERE machine = 'press-1' ORDER BY time DESC LIMIT 5"
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
or:  influx -port {influx.http_port} -database aguante -execute "{query}"
Device health:  influx -port {influx.http_port} -database aguante \
       -execute "SELECT last(polls), last(errors), last(up) FROM collector GROUP BY machine"
Make a machine fail:  curl -X POST 127.0.0.1:5019/faults -d '{{"device":"press-plc","kind":"drop"}}'
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
