"""The do-it-yourself contender of `make bench`: Node-RED with node-red-contrib-modbus and
node-red-contrib-influxdb, the stack plants wire up by hand, polling the same simulated devices
into the same InfluxDB as the other contenders (`NodeRed`, a `run.Contender`).

    from nodered import NodeRed, ensure_installed
    ensure_installed()     # npm ci into benchmarks/nodered/ (once; about 150 MB), red.js's path

The flow is what a typical hand-built one looks like: per device one `modbus-client` (TCP, unit
1), one `modbus-read` node per read of the protocol minimum (function code 3, every
`shape.interval` s), a `function` node that gathers a cycle's registers into one point
(measurement `reading`, tags factory/sector/machine, fields `r{address}`) and one `influxdb out`
node (InfluxDB 1.x, ms precision), which writes each point in a request of its own.

Versions are pinned in benchmarks/nodered/package.json and package-lock.json: Node-RED 4.1 (the
last line that runs on Node 20), node-red-contrib-modbus 5.45.2 (the last that supports Node 20)
with its `@openp4nr/modbus-serial` (a tarball outside the npm registry) overridden by the
registry's `modbus-serial@8.0.25`, and node-red-contrib-influxdb 0.7.0.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # run.py imports this module: no import of it at run time
    from run import Target

    from tests.services import InfluxDB

NODERED_DIR = Path(__file__).resolve().parent / "nodered"
MIN_NODE_MAJOR = 18  # Node-RED 4.1 and node-red-contrib-modbus 5.45 need Node >= 18.5
INSTALL_TIMEOUT_S = 900.0
_STAMP = ".aguante-installed"  # in node_modules/: the digest of the manifests it was installed from


class NodeRedUnavailable(RuntimeError):
    """Node-RED cannot be installed here: node or npm missing or too old, or npm failed."""


# -- installation --------------------------------------------------------------------------------


def red_js(directory: Path = NODERED_DIR) -> Path:
    return directory / "node_modules" / "node-red" / "red.js"


def _manifest_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def _check_node() -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        raise NodeRedUnavailable(
            f"the Node-RED benchmark contender needs {' and '.join(missing)} on PATH "
            f"(Node.js {MIN_NODE_MAJOR}.5 or later with npm; Debian: apt-get install nodejs npm)"
        )
    version = subprocess.run(
        ["node", "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        raise NodeRedUnavailable(
            f"the Node-RED benchmark contender needs Node.js {MIN_NODE_MAJOR}.5 or later; "
            f"`node --version` says {version or 'nothing'}"
        )


def ensure_installed(directory: Path = NODERED_DIR) -> Path:
    """Install the pinned Node-RED stack into `directory`/node_modules with `npm ci` unless it is
    already installed from the same package.json and package-lock.json; the path of red.js."""
    _check_node()
    digest = _manifest_digest(directory)
    stamp = directory / "node_modules" / _STAMP
    script = red_js(directory)
    with contextlib.suppress(OSError):
        if script.is_file() and stamp.read_text().strip() == digest:
            return script
    try:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise NodeRedUnavailable(
            f"`npm ci` in {directory} did not finish in {INSTALL_TIMEOUT_S:.0f} s"
        ) from exc
    if result.returncode != 0 or not script.is_file():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise NodeRedUnavailable(
            f"`npm ci` in {directory} failed (exit {result.returncode}); is the npm registry "
            f"reachable?\n{tail}"
        )
    stamp.write_text(digest + "\n")
    return script


# -- the flow ------------------------------------------------------------------------------------

# The function node's body, after a header of constants (see `function_body`). Node-RED runs it
# once per message from any of the device's reads; the read node's topic is its start address. A
# point goes out once every read of the cycle has come in; a read that fails leaves the point
# waiting for its next cycle, as a hand-written flow does.
_FUNCTION_BODY = """\
const registers = context.get("registers") || {};
const seen = context.get("seen") || {};
const start = Number(msg.topic);
msg.payload.forEach((value, offset) => { registers[start + offset] = value; });
seen[start] = true;
if (!READS.every((address) => seen[address])) {
    context.set("registers", registers);
    context.set("seen", seen);
    return null;
}
const fields = {};
for (const [name, address] of FIELDS) {
    fields[name] = registers[address];
}
fields.time = Date.now();
context.set("registers", {});
context.set("seen", {});
context.set("points", (context.get("points") || 0) + 1);
return { payload: [fields, TAGS] };
"""

# On stop (SIGTERM: Node-RED closes every node), one JSON line on stdout with what was read.
_FUNCTION_FINALIZE = """\
console.log(JSON.stringify({ machine: TAGS.machine, points_read: context.get("points") || 0 }));
"""


def function_header(machine: str, factory: str, sector: str, target: Target) -> str:
    shape = target.shape
    reads = [address for address, _ in shape.minimum_reads]
    fields = [[f"r{a}", a] for a in shape.addresses]
    tags = {"factory": factory, "sector": sector, "machine": machine}
    return (
        f"const READS = {json.dumps(reads)};  // start address of each read of a cycle\n"
        f"const FIELDS = {json.dumps(fields)};  // [field, register address]\n"
        f"const TAGS = {json.dumps(tags)};\n"
    )


def function_body(machine: str, factory: str, sector: str, target: Target) -> str:
    return function_header(machine, factory, sector, target) + _FUNCTION_BODY


def function_finalize(machine: str, factory: str, sector: str, target: Target) -> str:
    return function_header(machine, factory, sector, target) + _FUNCTION_FINALIZE


def _rate(interval: float) -> tuple[str, str]:
    """node-red-contrib-modbus's (rate, rateUnit) for an interval in seconds."""
    if float(interval).is_integer():
        return str(int(interval)), "s"
    return str(round(interval * 1000)), "ms"


def flows(target: Target, factory: str, sector: str) -> list[dict[str, Any]]:
    """The flows.json for `target`: one tab, one InfluxDB config node, and per device a client,
    its reads, a function node and an `influxdb out` node."""
    shape = target.shape
    influx = re.match(r"^(https?)://([^/:]+)(?::(\d+))?/?$", target.influx_url)
    if influx is None:
        raise ValueError(f"cannot split InfluxDB URL {target.influx_url!r} into host and port")
    scheme, host, port = influx.groups()
    tab = "aguante-bench"
    config = "influxdb-config"
    nodes: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "aguante bench", "disabled": False, "info": ""},
        {
            "id": config,
            "type": "influxdb",
            "hostname": host,
            "port": port or ("443" if scheme == "https" else "8086"),
            "protocol": scheme,
            "database": target.database,
            "name": "bench influxdb",
            "usetls": scheme == "https",
            "tls": "",
            "influxdbVersion": "1.x",
            "url": target.influx_url,
            "timeout": "10",
            "rejectUnauthorized": True,
        },
    ]
    rate, rate_unit = _rate(shape.interval)
    for n, device_port in enumerate(target.ports):
        machine = f"machine-{n}"
        client = f"modbus-client-{n}"
        function = f"function-{n}"
        out = f"influxdb-out-{n}"
        y = 60 + 80 * n
        nodes.append(
            {
                "id": client,
                "type": "modbus-client",
                "name": machine,
                "clienttype": "tcp",
                "bufferCommands": True,
                "stateLogEnabled": False,
                "queueLogEnabled": False,
                "failureLogEnabled": True,
                "tcpHost": "127.0.0.1",
                "tcpPort": str(device_port),
                "tcpType": "DEFAULT",
                "serialPort": "/dev/ttyUSB",
                "serialType": "RTU-BUFFERD",
                "serialBaudrate": "9600",
                "serialDatabits": "8",
                "serialStopbits": "1",
                "serialParity": "none",
                "serialConnectionDelay": "100",
                "serialAsciiResponseStartDelimiter": "0x3A",
                "unit_id": "1",
                "commandDelay": "1",
                "clientTimeout": "1000",
                "reconnectOnTimeout": True,
                "reconnectTimeout": "2000",
                # The default (true) lets requests to several unit ids interleave, which a
                # pymodbus server answers out of step: one unit, one request at a time.
                "parallelUnitIdsAllowed": False,
                "showErrors": False,
                "showWarnings": True,
                "showLogs": True,
            }
        )
        for address, count in shape.minimum_reads:
            nodes.append(
                {
                    "id": f"modbus-read-{n}-{address}",
                    "type": "modbus-read",
                    "z": tab,
                    "name": f"{machine} {address}+{count}",
                    "topic": str(address),  # the function node places the registers by it
                    "showStatusActivities": False,
                    "logIOActivities": False,
                    "showErrors": False,
                    "showWarnings": True,
                    "unitid": "1",
                    "dataType": "HoldingRegister",  # function code 3
                    "adr": str(address),
                    "quantity": str(count),
                    "rate": rate,
                    "rateUnit": rate_unit,
                    "delayOnStart": False,
                    "enableDeformedMessages": False,
                    "startDelayTime": "",
                    "server": client,
                    "useIOFile": False,
                    "ioFile": "",
                    "useIOForPayload": False,
                    "emptyMsgOnFail": False,
                    "x": 160,
                    "y": y,
                    "wires": [[function], []],  # values; the raw response buffer unused
                }
            )
        nodes.append(
            {
                "id": function,
                "type": "function",
                "z": tab,
                "name": f"{machine} point",
                "func": function_body(machine, factory, sector, target),
                "outputs": 1,
                "timeout": 0,
                "noerr": 0,
                "initialize": "",
                "finalize": function_finalize(machine, factory, sector, target),
                "libs": [],
                "x": 400,
                "y": y,
                "wires": [[out]],
            }
        )
        nodes.append(
            {
                "id": out,
                "type": "influxdb out",
                "z": tab,
                "influxdb": config,
                "name": f"{machine} to influxdb",
                "measurement": "reading",
                "precision": "ms",
                "retentionPolicy": "",
                "database": "database",
                "precisionV18FluxV20": "ms",
                "retentionPolicyV18Flux": "",
                "org": "organisation",
                "bucket": "bucket",
                "x": 620,
                "y": y,
                "wires": [],
            }
        )
    return nodes


_SETTINGS = """\
// Generated by benchmarks/nodered.py: a headless Node-RED running one generated flow.
module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {ui_port},
    httpAdminRoot: false,
    httpNodeRoot: false,
    flowFile: "flows.json",
    flowFilePretty: true,
    credentialSecret: false,
    userDir: {user_dir},
    nodesDir: [],
    functionExternalModules: false,
    functionTimeout: 0,
    diagnostics: {{ enabled: false, ui: false }},
    runtimeState: {{ enabled: false, ui: false }},
    telemetry: {{ enabled: false }},
    externalModules: {{ autoInstall: false, palette: {{ allowInstall: false }} }},
    logging: {{
        console: {{ level: "warn", metrics: false, audit: false }},
        // Errors (a failed read or write among them) once more on stderr, worded as the Python
        // contenders log, for the benchmark's scan of stderr for problems.
        stderr: {{
            level: "error",
            metrics: false,
            audit: false,
            handler: () => (msg) => {{
                const text = msg.msg && msg.msg.stack ? msg.msg.stack : String(msg.msg);
                const where = msg.type ? `[${{msg.type}}:${{msg.name || msg.id}}] ` : "";
                process.stderr.write(`${{new Date().toISOString()}} ERROR ${{where}}${{text}}\n`);
            }},
        }},
    }},
    editorTheme: {{ projects: {{ enabled: false }} }},
}};
"""


def settings_js(user_dir: Path, ui_port: int) -> str:
    return _SETTINGS.format(ui_port=ui_port, user_dir=json.dumps(str(user_dir)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_user_dir(
    target: Target, factory: str, sector: str, ui_port: int | None = None
) -> tuple[Path, Path]:
    """Node-RED's user dir for `target` under its workdir, with settings.js and flows.json;
    (user dir, settings.js)."""
    user_dir = target.workdir / f"{target.database}-nodered"
    user_dir.mkdir(parents=True, exist_ok=True)
    settings = user_dir / "settings.js"
    settings.write_text(settings_js(user_dir, _free_port() if ui_port is None else ui_port))
    (user_dir / "flows.json").write_text(json.dumps(flows(target, factory, sector), indent=1))
    return user_dir, settings


class NodeRed:
    """Node-RED with node-red-contrib-modbus and node-red-contrib-influxdb: a `run.Contender`.

    `factory` and `sector` are the tags every contender writes (run.py's FACTORY and SECTOR)."""

    name = "Node-RED"
    extra_warmup_s = 10.0  # it deploys its flows before the first poll: 200 devices take seconds

    def __init__(
        self, factory: str = "bench", sector: str = "bench", directory: Path = NODERED_DIR
    ) -> None:
        self.factory = factory
        self.sector = sector
        self.directory = directory

    def command(self, target: Target) -> list[str]:
        script = ensure_installed(self.directory)
        user_dir, settings = write_user_dir(target, self.factory, self.sector)
        return ["node", str(script), "--userDir", str(user_dir), "--settings", str(settings)]

    def points_read(self, target: Target, stdout: str, influx: InfluxDB) -> int | None:
        # Each function node's tally of the points it built, printed when Node-RED stops.
        tallies: dict[str, int] = {}
        for line in stdout.splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                record = json.loads(line)
                tallies[str(record["machine"])] = int(record["points_read"])
        return sum(tallies.values()) if tallies else None
