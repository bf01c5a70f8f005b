"""Scenario files: which simulated devices a plant has, their machines, register maps and shifts.

A scenario is YAML validated by the pydantic models below; `load_scenario` turns any mistake into a
`ScenarioError` that names the file and the path of the bad key (`devices[1].machines[0].unit`).
"""

from __future__ import annotations

import datetime as dt
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from simulators.encoding import ByteOrder, ValueType, register_count

__all__ = [
    "BOARD_FIRMWARES",
    "BareMachine",
    "Behaviour",
    "Board",
    "BoardValue",
    "Break",
    "Device",
    "Machine",
    "Scenario",
    "ScenarioError",
    "Shift",
    "Signal",
    "generate_scenario",
    "load_scenario",
    "packaged_scenarios",
]

State = Literal["off", "idle", "running", "fault"]
Table = Literal["coil", "discrete", "holding", "input"]
Transport = Literal["tcp", "rtu-over-tcp", "rtu"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BIT_TABLES = ("coil", "discrete")
Firmware = Literal["tasmota", "esphome", "shelly", "json", "plain", "sparkplug"]
BOARD_FIRMWARES: tuple[Firmware, ...] = get_args(Firmware)
BoardValueType = Literal["float", "float32", "int", "bool", "string"]
# Metering boards publish fixed quantities; their values are named after them.
_METERING: dict[str, tuple[set[str], set[str]]] = {  # firmware: (required, optional)
    "tasmota": ({"power", "voltage", "factor", "total"}, {"relay"}),
    "shelly": ({"apower", "voltage", "energy"}, {"output", "temperature"}),
}
_JSON_PATH = re.compile(r"^[A-Za-z_][\w-]*(\[\d+\])*(\.[A-Za-z_][\w-]*(\[\d+\])*)*$")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the bad key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Shift(_Model):
    """A working period on some weekdays; `end` before `start` means it runs past midnight."""

    name: str
    days: list[Weekday] = list(WEEKDAYS[:5])
    start: dt.time
    end: dt.time


class Break(_Model):
    """A pause inside any shift (machines go idle: powered, nobody at them)."""

    start: dt.time
    end: dt.time


class Behaviour(_Model):
    """How one signal follows its machine; exactly one of state / accumulate / level / constant.

    - `state`: true while the machine is in one of these states.
    - `accumulate`: grows by so much per simulated second in each state, from `initial`
      (part counters, run hours, kWh); integers are floored, so counters step like real ones.
    - `level`: a value per state, plus `wear` per running hour (capped at `wear_max`) and uniform
      `noise` (± that much, changing every simulated second).
    - `constant`: a fixed number or string (serial numbers, setpoints).
    """

    state: list[State] | None = None
    accumulate: dict[State, float] | None = None
    initial: float = 0.0
    level: dict[State, float] | None = None
    wear: float = 0.0
    wear_max: float = 0.0
    noise: Annotated[float, Field(ge=0)] = 0.0
    constant: float | str | None = None

    @field_validator("state", "accumulate", "level", mode="before")
    @classmethod
    def _yaml_off_is_a_state(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; nobody writing `off:` here means a boolean.
        def fix(item: Any) -> Any:
            return "off" if item is False else item

        if isinstance(value, dict):
            return {fix(k): v for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return [fix(value)] if isinstance(value, str | bool) else value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Behaviour:
        given = [
            k for k in ("state", "accumulate", "level", "constant") if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of state, accumulate, level, constant (got {given or 'none'})"
            )
        return self


class Signal(_Model):
    """One value in a machine's register map, encoded as the collector's config describes it."""

    name: str
    table: Table
    address: Annotated[int, Field(ge=0, le=65535)]
    type: ValueType
    order: ByteOrder = "ABCD"
    bit: Annotated[int, Field(ge=0, le=15)] | None = None
    count: Annotated[int, Field(ge=1, le=125)] | None = None
    scale: float = 1.0
    offset: float = 0.0
    writable: bool = False
    value: Behaviour

    @field_validator("scale")
    @classmethod
    def _scale_not_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale must not be 0")
        return value

    @model_validator(mode="after")
    def _fits_its_table(self) -> Signal:
        name = self.name
        if self.table in BIT_TABLES and self.type != "bool":
            raise ValueError(f"{name}: a {self.table} holds only 'type: bool'")
        if self.type == "bool" and self.table not in BIT_TABLES and self.bit is None:
            raise ValueError(
                f"{name}: 'bit' missing, demanded by a bool in a {self.table} register"
            )
        if self.bit is not None and (self.type != "bool" or self.table in BIT_TABLES):
            raise ValueError(f"{name}: 'bit' is only for a bool packed in a register")
        if (self.type == "string") != (self.count is not None):
            raise ValueError(f"{name}: 'count' (registers) goes with 'type: string' and only there")
        if self.type == "string" and not isinstance(self.value.constant, str):
            raise ValueError(f"{name}: a string signal needs 'value: {{constant: <text>}}'")
        if self.type == "bool" and self.value.state is None and self.value.constant is None:
            raise ValueError(f"{name}: a bool signal follows 'state' or is a 'constant'")
        if self.writable and self.table not in ("coil", "holding"):
            raise ValueError(f"{name}: only coils and holding registers can be writable")
        return self

    @property
    def width(self) -> int:
        """Registers (or bits) this signal occupies."""
        return 1 if self.table in BIT_TABLES else register_count(self.type, self.count or 0)


class BareMachine(_Model):
    """A machine with no PLC, seen only through its add-on boards; it still runs, idles and
    breaks down with its own seeded pattern."""

    id: str
    kind: str
    # Relative weights of what the machine does during a shift, drawn per block of minutes.
    states: dict[Literal["running", "idle", "fault"], Annotated[float, Field(ge=0)]] = {
        "running": 0.75,
        "idle": 0.2,
        "fault": 0.05,
    }
    block_minutes: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _some_state(self) -> BareMachine:
        if sum(self.states.values()) <= 0:
            raise ValueError(f"{self.id}: 'states' weights must not all be 0")
        return self


class Machine(BareMachine):
    """One old machine behind one Modbus unit id, with its own seeded run/idle/fault pattern."""

    unit: Annotated[int, Field(ge=1, le=247)]
    # Size of each table's address space; reads past it get exception 02. Default: up to the
    # last mapped address.
    sizes: dict[Table, Annotated[int, Field(ge=0, le=65536)]] = {}
    signals: list[Signal]

    @model_validator(mode="after")
    def _map_is_consistent(self) -> Machine:
        names: set[str] = set()
        used: dict[tuple[str, int], Signal] = {}
        for signal in self.signals:
            if signal.name in names:
                raise ValueError(f"{self.id}: signal name {signal.name!r} used twice")
            names.add(signal.name)
            for address in range(signal.address, signal.address + signal.width):
                other = used.get((signal.table, address))
                both_bits = other is not None and other.bit is not None and signal.bit is not None
                if other is not None and not (both_bits and other.bit != signal.bit):
                    raise ValueError(
                        f"{self.id}: {signal.name!r} overlaps {other.name!r} at "
                        f"{signal.table} address {address}"
                    )
                used[(signal.table, address)] = signal
            end = signal.address + signal.width
            if end > self.size(signal.table):
                raise ValueError(
                    f"{self.id}: {signal.name!r} ends at {signal.table} address {end - 1}, "
                    f"past 'sizes.{signal.table}: {self.sizes.get(signal.table)}'"
                )
        return self

    def size(self, table: Table) -> int:
        """Addresses this unit answers for in `table` (0 .. size-1)."""
        if table in self.sizes:
            return self.sizes[table]
        ends = [s.address + s.width for s in self.signals if s.table == table]
        return max(ends, default=0)


class BoardValue(_Model):
    """One value a board publishes, following its machine like a register signal does.

    `name` by firmware: tasmota — power, voltage, factor, total (kWh), relay; shelly — apower,
    voltage, energy (Wh), output, temperature; esphome — the sensor id (a bool is a
    binary_sensor); json — a path in the message (`sensors[0].temp`); plain — the last topic
    level; sparkplug — the metric name (`Booth/Temperature`).
    """

    name: str = Field(min_length=1)
    type: BoardValueType | None = None  # default: bool for `state`, string for text, else float
    decimals: Annotated[int, Field(ge=0, le=6)] = 2
    value: Behaviour

    @property
    def kind(self) -> BoardValueType:
        if self.type is not None:
            return self.type
        if self.value.state is not None:
            return "bool"
        return "string" if isinstance(self.value.constant, str) else "float"

    @model_validator(mode="after")
    def _type_fits(self) -> BoardValue:
        if self.type == "bool" and self.value.state is None and self.value.constant is None:
            raise ValueError(f"{self.name}: a bool value follows 'state' or is a 'constant'")
        if self.type == "string" and not isinstance(self.value.constant, str):
            raise ValueError(f"{self.name}: a string value needs 'value: {{constant: <text>}}'")
        if self.value.state is not None and self.kind != "bool":
            raise ValueError(f"{self.name}: a value following 'state' is a bool")
        return self


class Board(_Model):
    """A retrofit board on a machine, publishing over MQTT as its firmware does.

    `topic` by firmware: tasmota — the device topic (tele/<topic>/SENSOR); esphome — the node's
    topic prefix; shelly — the device prefix; json — the whole topic; plain — the prefix each
    value's name is appended to; sparkplug — group/edge_node/device.
    """

    name: str = Field(min_length=1)
    firmware: Firmware
    machine: str
    topic: str = Field(min_length=1)
    client_id: str | None = None  # default: the board's name
    period: Annotated[float, Field(gt=0)] = 10.0  # simulated seconds between telemetry
    values: list[BoardValue] = Field(min_length=1)

    @model_validator(mode="after")
    def _fits_its_firmware(self) -> Board:
        name, firmware = self.name, self.firmware
        levels = self.topic.split("/")
        if any(c in self.topic for c in "+#") or "" in levels:
            raise ValueError(f"{name}: topic {self.topic!r} must be a plain topic (no + # //)")
        if firmware == "sparkplug" and len(levels) != 3:
            raise ValueError(f"{name}: a sparkplug topic is group/edge_node/device")
        if firmware == "tasmota" and len(levels) != 1:
            raise ValueError(f"{name}: a tasmota topic is one level (tele/<topic>/SENSOR)")
        names = [v.name for v in self.values]
        if len(names) != len(set(names)):
            raise ValueError(f"{name}: a value name is used twice ({sorted(names)})")
        if firmware in _METERING:
            required, optional = _METERING[firmware]
            missing = sorted(required - set(names))
            unknown = sorted(set(names) - required - optional)
            if missing or unknown:
                raise ValueError(
                    f"{name}: a {firmware} board meters {', '.join(sorted(required))} "
                    f"(and optionally {', '.join(sorted(optional))}); "
                    + (f"missing {', '.join(missing)}" if missing else "")
                    + ("; " if missing and unknown else "")
                    + (f"unknown {', '.join(unknown)}" if unknown else "")
                )
        for value in self.values:
            if firmware == "json" and not _JSON_PATH.match(value.name):
                raise ValueError(f"{name}: {value.name!r} is not a path like sensors[0].temp")
            if firmware in ("plain", "esphome") and not re.match(r"^[\w-]+$", value.name):
                raise ValueError(f"{name}: {value.name!r} must be one topic level ([A-Za-z0-9_-])")
        return self


class Device(_Model):
    """One endpoint: a TCP port (a PLC, or a serial gateway) or a pseudo-terminal RS-485 bus."""

    name: str
    transport: Transport
    offset: Annotated[int, Field(ge=0)] | None = None  # port = port_base + offset
    path: str | None = None  # rtu: symlink created to the pty
    machines: list[Machine]

    @model_validator(mode="after")
    def _endpoint_is_complete(self) -> Device:
        if self.transport == "rtu" and (self.path is None or self.offset is not None):
            raise ValueError(f"{self.name}: an rtu device needs 'path' (and no 'offset')")
        if self.transport != "rtu" and (self.offset is None or self.path is not None):
            raise ValueError(f"{self.name}: a {self.transport} device needs 'offset' (no 'path')")
        units = [m.unit for m in self.machines]
        if len(units) != len(set(units)):
            raise ValueError(f"{self.name}: two machines share a unit id ({sorted(units)})")
        if not self.machines:
            raise ValueError(f"{self.name}: no machines")
        return self


class Scenario(_Model):
    """A whole simulated plant."""

    name: str
    description: str = ""
    timezone: str
    # Simulated time at start-up, in the plant's time zone; absent: the real current time.
    start: dt.datetime | None = None
    shifts: list[Shift] = []  # none: machines never stop for the clock
    breaks: list[Break] = []
    devices: list[Device] = []
    machines: list[BareMachine] = []  # machines with no PLC, seen only through boards
    boards: list[Board] = []

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _names_are_unique(self) -> Scenario:
        # Device, machine and board names share one namespace because faults target any.
        machines = [m.id for d in self.devices for m in d.machines] + [m.id for m in self.machines]
        names = [d.name for d in self.devices] + machines + [b.name for b in self.boards]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"device/machine names used twice: {', '.join(duplicates)}")
        if "all" in names:
            raise ValueError("'all' is reserved for faults on every device")
        offsets = [d.offset for d in self.devices if d.offset is not None]
        if len(offsets) != len(set(offsets)):
            raise ValueError(f"two devices share a port offset ({sorted(offsets)})")
        if not self.devices and not self.boards:
            raise ValueError("no devices and no boards: nothing to simulate")
        for board in self.boards:
            if board.machine not in machines:
                known = ", ".join(machines)
                raise ValueError(f"board {board.name}: no machine {board.machine!r} ({known})")
        watched = {b.machine for b in self.boards}
        for machine in self.machines:
            if machine.id not in watched:
                raise ValueError(f"machine {machine.id} has no PLC and no board: give it a board")
        return self

    def machine(self, machine_id: str) -> BareMachine:
        """A machine by id, with a PLC or not."""
        every = [m for d in self.devices for m in d.machines] + list(self.machines)
        return next(m for m in every if m.id == machine_id)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def packaged_scenarios() -> list[str]:
    """Names of the scenarios shipped in `simulators/scenarios/`."""
    folder = resources.files("simulators") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A packaged scenario by name (`metalworks`) or a YAML file by path."""
    text, origin = _read(name_or_path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"{origin}: expected a mapping at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"{origin}: {exc.error_count()} problem(s)"]
        lines += [f"  {_location(e['loc'], data)}: {e['msg']}" for e in exc.errors()]
        raise ScenarioError("\n".join(lines)) from None


def _read(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from exc
    if str(name_or_path) not in packaged_scenarios():
        known = ", ".join(packaged_scenarios())
        raise ScenarioError(f"no scenario {name_or_path!r}: give a YAML path or one of: {known}")
    resource = resources.files("simulators") / "scenarios" / f"{name_or_path}.yaml"
    return resource.read_text(encoding="utf-8"), f"scenario {name_or_path}"


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    # pydantic adds the validator's name for function validators; keep only real keys, and add
    # the `name`/`id` of list items so a user finds the machine without counting.
    out = ""
    node = data
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            label = node.get("name") or node.get("id") if isinstance(node, dict) else None
            out += f"({label})" if label else ""
        elif isinstance(node, dict) or node is None:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "(top level)"


def generate_scenario(
    devices: int, registers: int, transport: Transport = "tcp", pty_dir: str = "/tmp/aguante-sim"
) -> Scenario:
    """N devices, each one always-running machine (unit 1) with M changing holding registers.

    Meant for benchmarks: register i of a device counts up by (i % 7 + 1) per simulated second.
    """
    if devices < 1 or not 1 <= registers <= 65536:
        raise ValueError("generate_scenario: need devices >= 1 and 1 <= registers <= 65536")
    signals = [
        {
            "name": f"r{i}",
            "table": "holding",
            "address": i,
            "type": "uint16",
            "value": {"accumulate": {"running": i % 7 + 1}, "initial": i},
        }
        for i in range(registers)
    ]
    machines = [{"id": "", "kind": "generated", "unit": 1, "states": {"running": 1}, "signals": []}]
    spec = {
        "name": f"generated-{devices}x{registers}",
        "timezone": "UTC",
        "devices": [
            {
                "name": f"dev-{n}",
                "transport": transport,
                **({"path": f"{pty_dir}/gen-{n}"} if transport == "rtu" else {"offset": n}),
                "machines": [{**machines[0], "id": f"machine-{n}", "signals": signals}],
            }
            for n in range(devices)
        ],
    }
    return Scenario.model_validate(spec)
