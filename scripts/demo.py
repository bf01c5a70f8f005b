"""`make demo`: the whole system on simulated machines, with private services under `.demo/`.

Starts InfluxDB and Mosquitto (Debian's binaries, data under .demo/), the `metalworks`
simulation (Modbus devices and MQTT boards) and the collector reading it; prints what to look
at; Ctrl-C stops all of it.
The service launcher is the one the integration tests use, so the demo and the tests agree.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import InfluxDB, Mosquitto, free_port  # noqa: E402

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


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    influx = InfluxDB(DEMO / "influxdb")
    influx.http_port = _port(8086)
    influx.url = f"http://127.0.0.1:{influx.http_port}"
    influx.start()
    mosquitto = Mosquitto(DEMO / "mosquitto")
    mosquitto.port = _port(1884)
    mosquitto.url = mqtt_url = f"mqtt://127.0.0.1:{mosquitto.port}"
    mosquitto.start()
    env = os.environ | {
        "AGUANTE_INFLUXDB_URL": influx.url,
        "AGUANTE_INFLUXDB_DATABASE": "aguante",
        "AGUANTE_MQTT_URL": mqtt_url,
    }
    # The database and its retention policies, as a plant's install does it (no users here:
    # the demo's InfluxDB runs without authentication).
    subprocess.run([AGUANTE, "db", "init", str(CONFIG)], cwd=DEMO, env=env, check=True)
    children = [
        subprocess.Popen(
            [AGUANTE, "simulate", "metalworks", "--mqtt", mqtt_url], cwd=DEMO, **_OWN_GROUP
        )
    ]
    time.sleep(1.0)  # let the simulated devices listen before the first poll
    children.append(
        subprocess.Popen([AGUANTE, "collect", str(CONFIG)], cwd=DEMO, env=env, **_OWN_GROUP)
    )
    # The maintenance service and the crews' web app, with a secret made for this demo only
    # and a token for a crew member (tickets and tokens are kept under .demo/).
    web_port = _port(8080)
    env |= {"AGUANTE_SECRET_KEY": secrets.token_urlsafe(32), "AGUANTE_WEB_PORT": str(web_port)}
    token = subprocess.run(
        [AGUANTE, "maintenance", str(CONFIG), "--new-token", "Demo", "--crew", "mecanica"],
        cwd=DEMO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    children.append(
        subprocess.Popen([AGUANTE, "maintenance", str(CONFIG)], cwd=DEMO, env=env, **_OWN_GROUP)
    )
    query = "SELECT * FROM reading WHERE machine = 'press-1' ORDER BY time DESC LIMIT 5"
    today = dt.datetime.now(ZoneInfo("America/Argentina/Buenos_Aires")).date().isoformat()
    print(
        f"""
aguante demo running — Ctrl-C stops everything it started.

  InfluxDB   {influx.url}   database "aguante"   (data in .demo/influxdb)
  Mosquitto  {mqtt_url}           (data in .demo/mosquitto)
  machines   aguante simulate metalworks --mqtt {mqtt_url}
             six old machines over Modbus, seven retrofit boards over MQTT
             (faults: see docs/simulators.md)
  collector  aguante collect examples/metalworks.yaml

Live values, newest per machine:
  curl -sG {influx.url}/query --data-urlencode db=aguante \\
       --data-urlencode "q={query}"
or:  influx -port {influx.http_port} -database aguante -execute "{query}"
Device health:  influx -port {influx.http_port} -database aguante \
       -execute "SELECT last(polls), last(errors), last(up) FROM collector GROUP BY machine"
Machine states and stops (a minute or two after start):
  influx -port {influx.http_port} -database aguante \
       -execute "SELECT state FROM machine_state GROUP BY machine ORDER BY time DESC LIMIT 1"
  AGUANTE_INFLUXDB_URL={influx.url} aguante stops examples/metalworks.yaml --all
Capacity use and OEE today, by machine (in es; --lang pt-BR or en):
  AGUANTE_INFLUXDB_URL={influx.url} aguante kpi examples/metalworks.yaml \
       --from {today} --to {today} --by machine
What the Grafana dashboards show (floor, machine, maintenance, assembly), read from InfluxDB
as Grafana reads it (the floor's figures after a minute; Grafana itself: docs/install.md):
  AGUANTE_INFLUXDB_URL={influx.url} aguante dashboards show examples/metalworks.yaml floor
  AGUANTE_INFLUXDB_URL={influx.url} aguante dashboards show examples/metalworks.yaml \
       machine --machine press-1
The dashboards for Grafana: dashboards/grafana/<es|pt-BR|en>/, dashboards/provisioning/
Maintenance tickets (web app for the crews, es/pt-BR/en):
  http://127.0.0.1:{web_port}/login   token for crew "mecanica": {token}
Make a machine fail:  curl -X POST 127.0.0.1:5019/faults -d '{{"device":"press-plc","kind":"drop"}}'
A board drops off:    curl -X POST 127.0.0.1:5019/faults \\
                        -d '{{"device":"drill-1-plug","kind":"drop"}}'
Watch the boards:     mosquitto_sub -p {mosquitto.port} -t 'tele/#' -t 'spBv1.0/#' -v
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
        mosquitto.stop()
        influx.stop()
        print("demo stopped; data kept in .demo/ (make clean removes it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
