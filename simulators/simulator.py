"""A running scenario: every device served on its endpoint, faults switched on and off, and the
in-process API that tests and benchmarks drive (`async with run_scenario(...) as sim`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, get_args
from urllib.parse import unquote

from simulators.boards import LiveBoard, firmware_for
from simulators.control import ControlServer
from simulators.floor import MachineModel, Schedule, SimClock
from simulators.protocol import GATEWAY_TARGET_FAILED, exception_pdu, handle_pdu
from simulators.scenario import Device, Scenario, State, Table, Transport
from simulators.transports import PtyServer, Reply, TcpServer

__all__ = [
    "BOARD_FAULT_KINDS",
    "FAULT_KINDS",
    "MODBUS_FAULT_KINDS",
    "Endpoint",
    "Fault",
    "FaultKind",
    "Simulator",
    "parse_fault",
    "run_scenario",
]

FaultKind = Literal["timeout", "exception", "drop", "slow", "garbage", "malformed", "burst"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
MODBUS_FAULT_KINDS: tuple[FaultKind, ...] = ("timeout", "exception", "drop", "slow", "garbage")
BOARD_FAULT_KINDS: tuple[FaultKind, ...] = ("drop", "malformed", "burst")
_DEFAULT_ARG: dict[FaultKind, float | None] = {
    "exception": 4,  # server device failure
    "slow": 2.0,  # seconds
    "malformed": None,  # messages to spoil; none: until cleared
    "burst": 100,  # messages
}
_MQTT_URL = re.compile(
    r"^mqtt://((?P<user>[^:@/\s]+)(:(?P<password>[^@/\s]*))?@)?(?P<host>[^/\s:@]+)(:(?P<port>\d+))?/?$"
)


class Endpoint(NamedTuple):
    """Where a device is served: `port` is the TCP port, or for `rtu` the pty symlink path."""

    transport: Transport
    host: str | None
    port: int | str


@dataclass(frozen=True)
class Fault:
    """A fault on a device, a machine (one unit id), a board or `all`; `arg` is the exception
    code for `exception`, the delay in seconds for `slow`, the number of messages for `burst`
    and (optionally) for `malformed`."""

    kind: FaultKind
    arg: float | None = None

    @classmethod
    def make(cls, kind: str, arg: float | str | None = None) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}: use one of {', '.join(FAULT_KINDS)}")
        fault_kind: FaultKind = kind
        if arg is None or arg == "":
            return cls(fault_kind, _DEFAULT_ARG.get(fault_kind))
        if fault_kind not in _DEFAULT_ARG:
            raise ValueError(f"fault {kind!r} takes no argument (got {arg!r})")
        try:
            number = float(arg)
        except ValueError:
            raise ValueError(f"fault {kind!r}: argument {arg!r} is not a number") from None
        if kind == "exception" and not (number.is_integer() and 1 <= number <= 127):
            raise ValueError(f"fault 'exception': code must be an integer 1..127, got {arg!r}")
        if kind == "slow" and not 0 <= number <= 3600:
            raise ValueError(f"fault 'slow': delay must be 0..3600 seconds, got {arg!r}")
        if kind in ("malformed", "burst") and not (number.is_integer() and 1 <= number <= 100_000):
            raise ValueError(f"fault {kind!r}: a number of messages 1..100000, got {arg!r}")
        return cls(fault_kind, number)

    def describe(self) -> str:
        if self.arg is None:
            return self.kind
        whole = self.kind in ("exception", "malformed", "burst")
        return f"{self.kind}:{int(self.arg) if whole else self.arg:g}"


def parse_fault(text: str) -> tuple[str, Fault]:
    """`DEVICE=KIND[:ARG]` as given to `--fault`, e.g. `press-plc=exception:6`."""
    target, sep, spec = text.partition("=")
    if not sep or not target:
        raise ValueError(f"--fault {text!r}: expected DEVICE=KIND[:ARG], e.g. press-plc=timeout")
    kind, _, arg = spec.partition(":")
    return target.strip(), Fault.make(kind.strip(), arg.strip() or None)


class _LiveDevice:
    """A device's units and counters, and how its faults shape each reply."""

    def __init__(self, device: Device, models: dict[int, MachineModel], sim: Simulator) -> None:
        self.device = device
        self.units = models
        self.sim = sim
        self.requests = 0
        self.server: TcpServer | PtyServer | None = None

    async def respond(self, unit: int, pdu: bytes) -> Reply:
        self.requests += 1
        model = self.units.get(unit)
        fault = self.sim._fault_for(self.device.name, model.machine.id if model else None)
        if model is None or (fault is not None and fault.kind == "drop"):
            # An absent unit: silence on a serial line; a TCP gateway says so (Modbus 0x0B).
            if self.device.transport == "tcp" and pdu:
                return exception_pdu(pdu[0], GATEWAY_TARGET_FAILED), False
            return None, False
        if fault is None:
            return handle_pdu(model, pdu), False
        if fault.kind == "timeout":
            return None, False
        if fault.kind == "exception":
            return exception_pdu(pdu[0] if pdu else 0, int(fault.arg or 4)), False
        if fault.kind == "slow":
            await asyncio.sleep(fault.arg or 0.0)
            return handle_pdu(model, pdu), False
        return handle_pdu(model, pdu), True  # garbage


class Simulator:
    """Serves a scenario while in `async with`; see `run_scenario`."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        host: str = "127.0.0.1",
        port_base: int = 5020,
        seed: int = 0,
        speed: float = 1.0,
        start: dt.datetime | None = None,
        faults: Iterable[str | tuple[str, Fault]] = (),
        control_port: int | None = None,
        frozen: bool = False,
        mqtt_url: str | None = None,
        board_period: float | None = None,
        mqtt_username: str | None = None,
        mqtt_password: str | None = None,
    ) -> None:
        self.scenario = scenario
        self.host = host
        self.seed = seed
        self.control_port = control_port
        start = start or scenario.start
        if start is None:
            origin = time.time()
        else:  # a naive start is wall time in the plant
            origin = (start if start.tzinfo else start.replace(tzinfo=scenario.zone)).timestamp()
        self.clock = SimClock(origin, speed)
        if frozen:
            self.clock.freeze()
        schedule = Schedule(scenario)
        self._devices: dict[str, _LiveDevice] = {}
        self._machines: dict[str, tuple[str, MachineModel]] = {}
        self._bare: dict[str, MachineModel] = {
            m.id: MachineModel(m, schedule, self.clock, seed, origin) for m in scenario.machines
        }
        self.endpoints: dict[str, Endpoint] = {}
        for device in scenario.devices:
            models = {
                m.unit: MachineModel(m, schedule, self.clock, seed, origin) for m in device.machines
            }
            self._devices[device.name] = _LiveDevice(device, models, self)
            for model in models.values():
                self._machines[model.machine.id] = (device.name, model)
            if device.transport == "rtu":
                assert device.path is not None
                self.endpoints[device.name] = Endpoint("rtu", None, device.path)
            else:
                assert device.offset is not None
                port = port_base + device.offset
                if not 0 < port < 65536:
                    raise ValueError(f"{device.name}: port {port} out of range (port base?)")
                self.endpoints[device.name] = Endpoint(device.transport, host, port)
        self.mqtt_url = mqtt_url
        self._broker: tuple[str, int] | None = None
        if mqtt_url is not None:
            found = _MQTT_URL.match(mqtt_url)
            if found is None:
                raise ValueError(
                    f"MQTT URL {mqtt_url!r}: expected mqtt://[user:password@]host:port"
                )
            self._broker = (found["host"], int(found["port"] or 1883))
            if found["user"] is not None:  # the URL's own user wins over the arguments
                mqtt_username = unquote(found["user"])
                mqtt_password = unquote(found["password"] or "") or None
                # Shown in the map and the log: without the password.
                self.mqtt_url = f"mqtt://{self._broker[0]}:{self._broker[1]}"
        self._mqtt_login = (mqtt_username, mqtt_password)
        if board_period is not None and board_period <= 0:
            raise ValueError(f"board period must be > 0 seconds, got {board_period}")
        self.board_period = board_period
        self._boards: dict[str, LiveBoard] = {}
        self._board_specs = {b.name: b for b in scenario.boards}
        self._faults: dict[str, Fault] = {}
        self._initial_faults = [parse_fault(f) if isinstance(f, str) else f for f in faults]
        for target, _ in self._initial_faults:
            self._check_target(target)
        self._control: ControlServer | None = None
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Simulator:
        try:
            for name, live in self._devices.items():
                endpoint = self.endpoints[name]
                if endpoint.transport == "rtu":
                    live.server = PtyServer(str(endpoint.port), live.respond)
                else:
                    assert isinstance(endpoint.port, int)
                    rtu = endpoint.transport == "rtu-over-tcp"
                    live.server = TcpServer(self.host, endpoint.port, live.respond, rtu=rtu)
                await live.server.switch_on()
            if self._broker is not None:
                await self._start_boards(*self._broker)
            for target, fault in self._initial_faults:
                await self.set_fault(target, fault.kind, fault.arg)
            if self.control_port is not None:
                self._control = ControlServer(self, "127.0.0.1", self.control_port)
                await self._control.start()
        except BaseException:
            await self.close()
            raise
        self._started = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _start_boards(self, host: str, port: int) -> None:
        for board in self.scenario.boards:
            firmware = firmware_for(board, self._model_of(board.machine), self.scenario.zone)
            period = self.board_period or board.period
            username, password = self._mqtt_login
            live = LiveBoard(
                firmware,
                self.clock,
                host,
                port,
                period=period,
                username=username,
                password=password,
            )
            live.on_fault_over = self._fault_over
            self._boards[board.name] = live
            try:
                live.connect()
            except OSError as exc:
                raise OSError(f"MQTT broker {host}:{port}: {exc.strerror or exc}") from exc
        for name, live in self._boards.items():
            if not await live.wait_connected(5.0):
                reason = live.error or "no CONNACK within 5 s"
                raise OSError(f"MQTT broker {host}:{port}: board {name}: {reason}")
        for live in self._boards.values():
            live.start()

    async def close(self) -> None:
        """Say goodbye on every board, stop every server and close every socket and pty; safe
        to call twice."""
        if self._control is not None:
            await self._control.close()
            self._control = None
        boards, self._boards = list(self._boards.values()), {}
        for board in boards:
            await board.close()
        for live in self._devices.values():
            server, live.server = live.server, None
            if isinstance(server, TcpServer):
                await server.switch_off()
            elif isinstance(server, PtyServer):
                await server.close()
        self._started = False

    # -- time -----------------------------------------------------------------------------------

    def now(self) -> dt.datetime:
        """Simulated time, in the plant's time zone."""
        return dt.datetime.fromtimestamp(self.clock.now(), self.scenario.zone)

    def freeze(self) -> None:
        """Hold simulated time still: every register keeps its value until `unfreeze`."""
        self.clock.freeze()

    def unfreeze(self) -> None:
        self.clock.unfreeze()

    def advance(self, seconds: float) -> None:
        """Move simulated time forward at once (frozen or not)."""
        self.clock.advance(seconds)

    @property
    def frozen(self) -> bool:
        return self.clock.frozen

    # -- faults ---------------------------------------------------------------------------------

    async def set_fault(self, target: str, kind: str, arg: float | str | None = None) -> None:
        """Fault a device, one machine (its unit id only), a board or `all`. `drop` on a TCP
        device closes its port; on a serial bus or for one machine, the unit falls silent; on a
        board, its socket closes without a DISCONNECT (the broker publishes its will).
        `malformed` spoils a board's next payloads (all until cleared, or `arg` of them);
        `burst` publishes `arg` messages at once and returns when the broker has them."""
        self._check_target(target)
        fault = Fault.make(kind, arg)
        if target == "all":
            if fault.kind in MODBUS_FAULT_KINDS:
                for name in self._devices:
                    await self.set_fault(name, kind, arg)
            if fault.kind in BOARD_FAULT_KINDS:
                for name in self._boards:
                    await self.set_fault(name, kind, arg)
            return
        if target in self._board_specs:
            await self._fault_board(target, fault)
            return
        if fault.kind not in MODBUS_FAULT_KINDS:
            raise ValueError(
                f"{target} is a Modbus device or machine: its faults are "
                f"{', '.join(MODBUS_FAULT_KINDS)} (not {kind!r})"
            )
        if target in self._bare:
            boards = [b.name for b in self.scenario.boards if b.machine == target]
            raise ValueError(f"{target} has no PLC; fault its board: {', '.join(boards)}")
        self._faults[target] = fault
        await self._apply_power(target)

    async def _fault_board(self, name: str, fault: Fault) -> None:
        if fault.kind not in BOARD_FAULT_KINDS:
            raise ValueError(
                f"{name} is an MQTT board: its faults are {', '.join(BOARD_FAULT_KINDS)} "
                f"(not {fault.kind!r})"
            )
        live = self._live_board(name)
        if fault.kind == "burst":
            await live.burst(int(fault.arg or 100))
            return
        self._faults[name] = fault
        if fault.kind == "drop":
            live.drop()
        else:
            live.malformed = -1 if fault.arg is None else int(fault.arg)

    async def clear_fault(self, target: str) -> None:
        """Remove the fault of a device, machine or board; `all` removes every fault. A dropped
        board reconnects (online and births again) before this returns."""
        self._check_target(target)
        targets = list(self._faults) if target == "all" else [target]
        for name in targets:
            self._faults.pop(name, None)
            if name in self._boards:
                live = self._boards[name]
                live.malformed = None
                await live.restore()
            else:
                await self._apply_power(name)

    def faults(self) -> dict[str, Fault]:
        return dict(self._faults)

    def _check_target(self, target: str) -> None:
        known = [*self._devices, *self._machines, *self._bare, *self._board_specs]
        if target != "all" and target not in known:
            raise KeyError(
                f"no device, machine or board {target!r}; known: {', '.join(known)}, all"
            )

    async def _apply_power(self, name: str) -> None:
        live = self._devices.get(name)
        if live is None or live.server is None:
            return
        fault = self._faults.get(name)
        if fault is not None and fault.kind == "drop":
            await live.server.switch_off()
        else:
            await live.server.switch_on()

    def _fault_for(self, device: str, machine: str | None) -> Fault | None:
        return (self._faults.get(machine) if machine else None) or self._faults.get(device)

    # -- boards ---------------------------------------------------------------------------------

    def _fault_over(self, board: str) -> None:
        self._faults.pop(board, None)  # `malformed:N` after its N messages

    def _live_board(self, name: str) -> LiveBoard:
        if name not in self._boards:
            if name in self._board_specs:
                raise ValueError(f"board {name!r} runs only with an MQTT broker (mqtt_url, --mqtt)")
            raise KeyError(f"no board {name!r}; known: {', '.join(self._board_specs)}")
        return self._boards[name]

    def _model_of(self, machine: str) -> MachineModel:
        if machine in self._bare:
            return self._bare[machine]
        if machine not in self._machines:
            known = ", ".join([*self._machines, *self._bare])
            raise KeyError(f"no machine {machine!r}; known: {known}")
        return self._machines[machine][1]

    def board_topics(self, board: str) -> list[str]:
        """Every topic a running board publishes on (values, availability, births, deaths)."""
        return self._live_board(board).firmware.topics()

    def board_topics_of(self, board: str) -> list[str]:
        """The topics a board of the scenario would publish on, running or not."""
        spec = self._board_specs[board]
        return firmware_for(spec, self._model_of(spec.machine), self.scenario.zone).topics()

    def published(self, board: str) -> dict[str, bytes]:
        """The last payload a board published on each topic (as sent, garbage included)."""
        return dict(self._live_board(board).last)

    def publish_count(self, board: str) -> int:
        """Messages a board has handed to the broker since start."""
        return self._live_board(board).published

    def board_online(self, board: str) -> bool:
        """Whether a board is connected to the broker now."""
        return self._live_board(board).connected

    def describe_boards(self) -> list[dict[str, Any]]:
        """Boards, their machines, topics, connection, fault and message counts (GET /boards)."""
        out = []
        for board in self.scenario.boards:
            live = self._boards.get(board.name)
            fault = self._faults.get(board.name)
            out.append(
                {
                    "board": board.name,
                    "firmware": board.firmware,
                    "machine": board.machine,
                    "client_id": board.client_id or board.name,
                    "running": live is not None,
                    "online": live is not None and live.connected,
                    "fault": fault.describe() if fault else None,
                    "published": live.published if live else 0,
                    "topics": self.board_topics_of(board.name),
                }
            )
        return out

    # -- looking inside -------------------------------------------------------------------------

    def _model(self, device: str, unit: int) -> MachineModel:
        if device not in self._devices:
            raise KeyError(f"no device {device!r}; known: {', '.join(self._devices)}")
        units = self._devices[device].units
        if unit not in units:
            raise KeyError(f"{device}: no unit {unit}; units: {sorted(units)}")
        return units[unit]

    def read_registers(
        self, device: str, unit: int, table: Table, address: int, count: int
    ) -> list[int]:
        """What a read of `holding`/`input` registers would return now (ignoring faults)."""
        if table not in ("holding", "input"):
            raise ValueError(f"read_registers reads holding or input, not {table!r}")
        return self._model(device, unit).read(table, address, count)

    def read_bits(
        self, device: str, unit: int, table: Table, address: int, count: int
    ) -> list[bool]:
        """What a read of `coil`/`discrete` bits would return now (ignoring faults)."""
        if table not in ("coil", "discrete"):
            raise ValueError(f"read_bits reads coil or discrete, not {table!r}")
        return [bool(b) for b in self._model(device, unit).read(table, address, count)]

    def machine_state(self, machine: str) -> State:
        """What a machine is doing now: off, idle, running or fault."""
        return self._model_of(machine).state_at(self.clock.now())

    def values(self, machine: str) -> dict[str, float | int | str | bool]:
        """Every signal of a machine now, as engineering values before any encoding."""
        if machine not in self._machines:
            raise KeyError(f"no machine {machine!r}; known: {', '.join(self._machines)}")
        model = self._machines[machine][1]
        t = self.clock.now()
        return {signal.name: model.value(signal, t) for signal in model.signals}

    def request_count(self, device: str) -> int:
        """Modbus requests received by a device since start (answered or not)."""
        return self._devices[device].requests

    def describe(self) -> list[dict[str, Any]]:
        """Devices, endpoints, machines, states and faults: what GET /devices returns."""
        t = self.clock.now()
        out = []
        for name, live in self._devices.items():
            endpoint = self.endpoints[name]
            fault = self._faults.get(name)
            out.append(
                {
                    "device": name,
                    "transport": endpoint.transport,
                    "host": endpoint.host,
                    "port": endpoint.port,
                    "fault": fault.describe() if fault else None,
                    "requests": live.requests,
                    "machines": [
                        {
                            "id": m.machine.id,
                            "kind": m.machine.kind,
                            "unit": unit,
                            "state": m.state_at(t),
                            "fault": (f := self._faults.get(m.machine.id)) and f.describe(),
                        }
                        for unit, m in live.units.items()
                    ],
                }
            )
        return out


def run_scenario(
    scenario: Scenario,
    *,
    host: str = "127.0.0.1",
    port_base: int = 5020,
    seed: int = 0,
    speed: float = 1.0,
    start: dt.datetime | None = None,
    faults: Iterable[str | tuple[str, Fault]] = (),
    control_port: int | None = None,
    frozen: bool = False,
    mqtt_url: str | None = None,
    board_period: float | None = None,
    mqtt_username: str | None = None,
    mqtt_password: str | None = None,
) -> Simulator:
    """A simulator for `scenario`, serving while inside `async with`.

    Ports are `port_base + offset` for each TCP device; `start` is the simulated time at start-up
    (naive = the plant's local time; default: the scenario's `start`, else now); `faults` are
    `DEVICE=KIND[:ARG]` strings; `control_port` also starts the HTTP control endpoint;
    `frozen` starts with simulated time held at `start` (call `unfreeze` to let it run);
    `mqtt_url` (mqtt://[user:password@]host:port) also runs the scenario's boards against that
    broker, each publishing every `board_period` simulated seconds if given, else its own
    `period`; all boards log in as `mqtt_username` / `mqtt_password` when given (a broker that
    refuses anonymous clients), or as the URL's user.
    """
    return Simulator(
        scenario,
        host=host,
        port_base=port_base,
        seed=seed,
        speed=speed,
        start=start,
        faults=faults,
        control_port=control_port,
        frozen=frozen,
        mqtt_url=mqtt_url,
        board_period=board_period,
        mqtt_username=mqtt_username,
        mqtt_password=mqtt_password,
    )
