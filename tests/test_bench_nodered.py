"""The Node-RED benchmark contender (benchmarks/nodered.py): the flow it generates for a target,
and the function node's JavaScript run with `node` on sample registers. No npm install, no
network, no Node-RED."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))  # benchmarks/ is not a package: its scripts import each other so

import nodered  # noqa: E402
import run  # noqa: E402

# Pairs 11 apart (merged into one read) and 40 apart (split): reads (0, 12) and (40, 12).
SHAPE = run.Shape("tiny", "3 devices × 4 scattered registers", 3, (0, 11, 40, 51), interval=1.0)


def make_target(tmp_path: Path, shape: run.Shape = SHAPE) -> run.Target:
    ports = [21001 + n for n in range(shape.devices)]
    return run.Target(shape, ports, "http://127.0.0.1:18086", "tiny_node_red", tmp_path)


def by_type(nodes: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [node for node in nodes if node["type"] == kind]


def test_flows_json_has_a_client_per_device_and_the_minimum_reads(tmp_path: Path) -> None:
    target = make_target(tmp_path)
    user_dir, settings = nodered.write_user_dir(target, "f1", "s1", ui_port=18800)
    nodes = json.loads((user_dir / "flows.json").read_text())
    assert user_dir.parent == tmp_path and settings == user_dir / "settings.js"
    assert len({node["id"] for node in nodes}) == len(nodes)
    ids = {node["id"] for node in nodes}
    for node in nodes:  # every wire and every config reference points at a node of the flow
        for output in node.get("wires", []):
            assert set(output) <= ids
        for key in ("z", "server", "influxdb"):
            if key in node:
                assert node[key] in ids

    clients = by_type(nodes, "modbus-client")
    assert [(c["tcpHost"], c["tcpPort"]) for c in clients] == [
        ("127.0.0.1", str(port)) for port in target.ports
    ]
    for client in clients:
        assert client["clienttype"] == "tcp"
        assert client["unit_id"] == "1"
        assert client["parallelUnitIdsAllowed"] is False

    assert SHAPE.minimum_reads == [(0, 12), (40, 12)]
    reads = by_type(nodes, "modbus-read")
    assert len(reads) == len(clients) * len(SHAPE.minimum_reads)
    for client in clients:
        mine = [r for r in reads if r["server"] == client["id"]]
        assert [(int(r["adr"]), int(r["quantity"])) for r in mine] == SHAPE.minimum_reads
        for read in mine:
            assert read["dataType"] == "HoldingRegister"  # function code 3
            assert (read["rate"], read["rateUnit"]) == ("1", "s")
            assert read["unitid"] == "1"
            assert read["topic"] == read["adr"]

    functions = by_type(nodes, "function")
    outs = by_type(nodes, "influxdb out")
    assert len(functions) == len(outs) == len(clients)
    for n, client in enumerate(clients):
        function_ids = {
            target_id for r in reads if r["server"] == client["id"] for target_id in r["wires"][0]
        }
        assert len(function_ids) == 1  # all of a device's reads feed one function node
        (function,) = [f for f in functions if f["id"] in function_ids]
        assert f'"machine": "machine-{n}"' in function["func"]
        (out_id,) = function["wires"][0]
        (out,) = [o for o in outs if o["id"] == out_id]
        assert (out["measurement"], out["precision"]) == ("reading", "ms")

    (config,) = by_type(nodes, "influxdb")
    assert all(out["influxdb"] == config["id"] for out in outs)
    assert config["influxdbVersion"] == "1.x"
    assert (config["protocol"], config["hostname"], config["port"]) == (
        "http",
        "127.0.0.1",
        "18086",
    )
    assert config["database"] == "tiny_node_red"

    text = settings.read_text()
    for setting in (
        "httpAdminRoot: false",
        "uiPort: 18800",
        "credentialSecret: false",
        'flowFile: "flows.json"',
        'level: "warn"',
    ):
        assert setting in text


def test_read_rate_below_a_second_is_in_milliseconds(tmp_path: Path) -> None:
    shape = run.Shape("fast", "fast", 1, (0,), interval=0.5)
    nodes = nodered.flows(make_target(tmp_path, shape), "f", "s")
    (read,) = by_type(nodes, "modbus-read")
    assert (read["rate"], read["rateUnit"]) == ("500", "ms")
    assert (read["adr"], read["quantity"]) == ("0", "1")


def test_command_runs_red_js_with_the_user_dir_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    red_js = tmp_path / "red.js"
    monkeypatch.setattr(nodered, "ensure_installed", lambda directory: red_js)
    target = make_target(tmp_path)
    command = nodered.NodeRed("f1", "s1").command(target)
    user_dir = tmp_path / "tiny_node_red-nodered"
    assert command == [
        "node",
        str(red_js),
        "--userDir",
        str(user_dir),
        "--settings",
        str(user_dir / "settings.js"),
    ]
    assert (user_dir / "flows.json").is_file()


def test_points_read_sums_the_function_nodes_tallies(tmp_path: Path) -> None:
    contender = nodered.NodeRed()
    stdout = (
        "25 Nov 22:32:37 - [warn] Using unencrypted credentials\n"
        '{"machine":"machine-0","points_read":23}\n'
        "42\n"
        '{"machine":"machine-1","points_read":21}\n'
    )
    target = make_target(tmp_path)
    assert contender.points_read(target, stdout, None) == 44  # type: ignore[arg-type]
    assert contender.points_read(target, "[warn] nothing\n", None) is None  # type: ignore[arg-type]


def test_ensure_installed_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(nodered.NodeRedUnavailable, match="needs node and npm on PATH"):
        nodered.ensure_installed(tmp_path)


def test_ensure_installed_skips_npm_when_installed_from_the_same_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not on PATH")
    for name in ("package.json", "package-lock.json"):
        (tmp_path / name).write_text("{}\n")
    red_js = nodered.red_js(tmp_path)
    red_js.parent.mkdir(parents=True)
    red_js.write_text("")
    (tmp_path / "node_modules" / ".aguante-installed").write_text(
        nodered._manifest_digest(tmp_path) + "\n"
    )

    def no_npm(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"npm was run: {args}")

    real_run = subprocess.run
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda argv, **kw: no_npm(argv) if argv[0] == "npm" else real_run(argv, **kw),
    )
    assert nodered.ensure_installed(tmp_path) == red_js


# Runs a function node's body and its On Stop code as Node-RED does: `msg`, `context` and
# `console` in scope, the body's return value the message sent on (null: none).
_HARNESS = """\
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const store = {};
const context = { get: (key) => store[key], set: (key, value) => { store[key] = value; } };
const logs = [];
const console_ = { log: (line) => logs.push(line) };
const body = new Function("msg", "context", "node", "console", input.func);
const outputs = input.messages.map((msg) => body(msg, context, {}, console_));
new Function("msg", "context", "node", "console", input.finalize)(undefined, context, {}, console_);
process.stdout.write(JSON.stringify({ outputs, logs }));
"""


def test_function_node_maps_registers_to_one_point_a_cycle(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH: the function node's JavaScript cannot be run")
    target = make_target(tmp_path)
    (function,) = [
        f
        for f in by_type(nodered.flows(target, "f1", "s1"), "function")
        if "machine-1" in f["name"]
    ]
    low = [100 + i for i in range(12)]  # registers 0..11
    high = [200 + i for i in range(12)]  # registers 40..51
    messages = [
        {"topic": "0", "payload": low},
        {"topic": "40", "payload": high},
        {"topic": "40", "payload": [v + 1 for v in high]},  # next cycle, in the other order
        {"topic": "0", "payload": [v + 1 for v in low]},
        {"topic": "0", "payload": low},  # a cycle not complete when stopped
    ]
    harness = tmp_path / "harness.js"
    harness.write_text(_HARNESS)
    result = subprocess.run(
        [node, str(harness)],
        input=json.dumps(
            {"func": function["func"], "finalize": function["finalize"], "messages": messages}
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = json.loads(result.stdout)
    outputs = out["outputs"]
    assert [o is None for o in outputs] == [True, False, True, False, True]
    tags = {"factory": "f1", "sector": "s1", "machine": "machine-1"}
    for output, bump in ((outputs[1], 0), (outputs[3], 1)):
        fields, point_tags = output["payload"]
        assert point_tags == tags
        assert isinstance(fields.pop("time"), int)
        assert fields == {"r0": 100 + bump, "r11": 111 + bump, "r40": 200 + bump, "r51": 211 + bump}
    assert [json.loads(line) for line in out["logs"]] == [
        {"machine": "machine-1", "points_read": 2}
    ]
