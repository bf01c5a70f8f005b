"""`aguante init [FILE]`: a guided session in the terminal that writes a factory config — the
factory, its sectors and shifts, machines read through a device profile, through registers
found with `aguante probe`, or through an MQTT board by its firmware — checking every answer as
it is typed, and ending with `aguante check` on the file it wrote.

It reads answers line by line from standard input, so a script (or a test) can drive it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

import yaml
from pydantic import TypeAdapter, ValidationError

from collector.config import (
    LANGUAGES,
    Language,
    ModbusDevice,
    MqttSubscription,
    Name,
    Shift,
    Signal,
    validation_problems,
)
from collector.i18n import language_from_environment, translate
from collector.profiles import load_profile, profile_ids

__all__ = ["Asker", "Stopped", "register", "run_init"]

T = TypeVar("T")
_NAME: TypeAdapter[str] = TypeAdapter(Name)
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_YES = {"y", "yes", "s", "si", "sí", "sim"}
_NO = {"n", "no", "não", "nao"}
FIRMWARES = ("tasmota", "esphome", "shelly", "json")


class Stopped(Exception):
    """The person ended the session (end of input): nothing is written."""


def register(commands: Any) -> None:
    """Add the `init` subcommand to the `aguante` parser."""
    init = commands.add_parser(
        "init",
        help="write a factory config by answering questions",
        description="Ask for the factory, its sectors and shifts, and its machines (from a "
        "device profile, from registers found with `aguante probe`, or from an MQTT board), "
        "check each answer as it is typed, write the file and run `aguante check` on it.",
    )
    init.add_argument(
        "file", nargs="?", type=Path, default=Path("factory.yaml"), help="(factory.yaml)"
    )
    init.add_argument("--lang", choices=LANGUAGES, help="language (default: the terminal's)")
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    return run_init(args.file, args.lang, sys.stdin, sys.stdout)


def run_init(path: Path, lang: Language | None, stdin: TextIO, stdout: TextIO) -> int:
    """The whole session; 0 when the file was written and passes `aguante check`."""
    asker = Asker(lang or language_from_environment(), stdin, stdout)
    try:
        if lang is None:
            asker.lang = asker.ask("init.language", asker.lang, _language)
        config = _session(asker, path)
    except Stopped:
        asker.say("init.stopped")
        return 1
    header = translate(asker.lang, "init.header", date=dt.date.today().isoformat(), path=path.name)
    text = "".join(f"# {line}\n" for line in header.splitlines())
    text += yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=100)
    path.write_text(text, encoding="utf-8")
    asker.say("init.written", path=str(path))
    from collector.cli import main  # the same check as `aguante check FILE`

    stdout.flush()
    return main(["check", str(path)])


class Asker:
    """Questions in one language, each answer checked at once and asked again until it is
    right; the end of input stops the session."""

    def __init__(self, lang: Language, stdin: TextIO, stdout: TextIO) -> None:
        self.lang = lang
        self.stdin, self.stdout = stdin, stdout

    def say(self, key: str, **values: Any) -> None:
        print(translate(self.lang, key, **values), file=self.stdout, flush=True)

    def ask(self, key: str, default: str | None, check: Callable[[str], T], **values: Any) -> T:
        question = translate(self.lang, key, **values)
        while True:
            shown = f" [{default}]" if default else ""
            print(f"{question}{shown}: ", end="", file=self.stdout, flush=True)
            line = self.stdin.readline()
            if not line:
                print(file=self.stdout)
                raise Stopped
            answer = line.strip() or (default or "")
            try:
                return check(answer)
            except _Invalid as exc:
                print(f"  ✗ {translate(self.lang, exc.key, **exc.values)}", file=self.stdout)
            except (ValueError, ValidationError) as exc:
                print(f"  ✗ {_problem_text(exc)}", file=self.stdout)

    def yes(self, key: str, default: bool, **values: Any) -> bool:
        def check(answer: str) -> bool:
            word = answer.lower()
            if word in _YES:
                return True
            if word in _NO:
                return False
            raise _Invalid("init.bad_yes_no")

        default_word = translate(self.lang, "init.yes" if default else "init.no")
        return self.ask(key, default_word, check, **values)

    def choose(self, key: str, choices: list[str], default: str | None, **values: Any) -> str:
        def check(answer: str) -> str:
            if answer.isdigit() and 1 <= int(answer) <= len(choices):
                return choices[int(answer) - 1]
            if answer in choices:
                return answer
            raise _Invalid("init.bad_choice", choices=", ".join(choices))

        return self.ask(key, default, check, **values)


class _Invalid(ValueError):
    """An answer that is not right, with the message key that says why."""

    def __init__(self, key: str, **values: Any) -> None:
        super().__init__(key)
        self.key, self.values = key, values


def _problem_text(exc: ValueError | ValidationError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(str(p) for p in validation_problems(exc))
    return str(exc)


# -- the answers, each checked ------------------------------------------------------------------


def _language(answer: str) -> Language:
    for language in LANGUAGES:
        if answer.lower() == language.lower():
            return language
    raise _Invalid("init.bad_choice", choices=", ".join(LANGUAGES))


def _name(answer: str) -> str:
    try:
        return _NAME.validate_python(answer)
    except ValidationError:
        raise _Invalid("init.bad_name", answer=answer) from None


def _optional_name(answer: str) -> str:
    return _name(answer) if answer else ""


def _zone(answer: str) -> str:
    try:
        zoneinfo.ZoneInfo(answer)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _Invalid("init.bad_zone", answer=answer) from None
    return answer


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def check(answer: str) -> str:
        if not answer.startswith(tuple(f"{s}://" for s in schemes)) or answer[-3:] == "://":
            raise _Invalid("init.bad_url", schemes=", ".join(f"{s}://" for s in schemes))
        return answer

    return check


def _number(low: int, high: int) -> Callable[[str], int]:
    def check(answer: str) -> int:
        if not answer.isdigit() or not low <= int(answer) <= high:
            raise _Invalid("init.bad_number", low=low, high=high)
        return int(answer)

    return check


def _float(answer: str) -> float:
    try:
        return float(answer.replace(",", "."))
    except ValueError:
        raise _Invalid("init.bad_float", answer=answer) from None


def _time(answer: str) -> str:
    try:
        dt.time.fromisoformat(answer)
    except ValueError:
        raise _Invalid("init.bad_time", answer=answer) from None
    if len(answer) != 5:
        raise _Invalid("init.bad_time", answer=answer)
    return answer


def _days(answer: str) -> list[str]:
    days: list[str] = []
    for part in answer.replace(" ", "").lower().split(","):
        first, _, last = part.partition("-")
        if first not in _WEEKDAYS or (last and last not in _WEEKDAYS):
            raise _Invalid("init.bad_days", days=", ".join(_WEEKDAYS))
        start = _WEEKDAYS.index(first)
        end = _WEEKDAYS.index(last) if last else start
        if end < start:
            raise _Invalid("init.bad_days", days=", ".join(_WEEKDAYS))
        days.extend(d for d in _WEEKDAYS[start : end + 1] if d not in days)
    return days


def _names(answer: str) -> list[str]:
    names = [part.strip() for part in answer.split(",") if part.strip()]
    if not names:
        raise _Invalid("init.need_one")
    checked = [_name(n) for n in names]
    if len(set(checked)) != len(checked):
        raise _Invalid("init.duplicate", name=next(n for n in checked if checked.count(n) > 1))
    return checked


# -- the session -------------------------------------------------------------------------------


def _session(asker: Asker, path: Path) -> dict[str, Any]:
    asker.say("init.welcome", path=str(path))
    if path.exists() and not asker.yes("init.exists", False, path=str(path)):
        raise Stopped
    config: dict[str, Any] = {"factory": asker.ask("init.factory", "cooperativa", _name)}
    config["timezone"] = asker.ask("init.timezone", "America/Argentina/Buenos_Aires", _zone)
    config["language"] = asker.lang
    config["influxdb"] = {
        "url": asker.ask("init.influx_url", "http://127.0.0.1:8086", _url(("http", "https"))),
        "database": asker.ask("init.influx_db", "aguante", _name),
    }
    sectors = asker.ask("init.sectors", None, _names)
    config["sectors"] = [{"id": s} for s in sectors]
    shifts = _shifts(asker)
    if shifts:
        config["calendar"] = {"shifts": shifts}
    machines: list[dict[str, Any]] = []
    mqtt_used = False
    asker.say("init.machines_intro")
    while True:
        taken = {m["id"] for m in machines}

        def machine_id(answer: str, taken: set[str] = taken) -> str:
            if not answer:
                if not machines:
                    raise _Invalid("init.need_machine")
                return ""
            name = _name(answer)
            if name in taken:
                raise _Invalid("init.duplicate", name=name)
            return name

        ident = asker.ask("init.machine_id", None, machine_id)
        if not ident:
            break
        machine: dict[str, Any] = {"id": ident}
        label = asker.ask("init.machine_name", "", lambda a: a)
        if label:
            machine["name"] = label
        machine["sector"] = asker.choose("init.machine_sector", sectors, sectors[0])
        how = asker.choose("init.machine_how", ["profile", "probe", "mqtt"], "profile")
        signals: list[tuple[str, str]]  # (name, kind) for the running question
        if how == "mqtt":
            machine["mqtt"] = [_board(asker)]
            mqtt_used = True
            signals = [(s["name"], s.get("type", "float")) for s in machine["mqtt"][0]["signals"]]
        else:
            machine["modbus"] = _modbus(asker, how)
            device = ModbusDevice.model_validate(machine["modbus"])
            signals = [(s.name, s.field_kind) for s in device.signals]
        state = _state(asker, signals)
        if state:
            machine["state"] = state
        machines.append(machine)
        asker.say("init.machine_added", machine=ident, count=len(machines))
    if mqtt_used:
        url = asker.ask("init.mqtt_url", "mqtt://127.0.0.1:1883", _url(("mqtt", "mqtts")))
        config["mqtt"] = {"url": url}
    config["machines"] = machines
    return config


def _shifts(asker: Asker) -> list[dict[str, Any]]:
    asker.say("init.shifts_intro")
    shifts: list[dict[str, Any]] = []
    while True:
        name = asker.ask("init.shift_name", None, lambda a: a)
        if not name:
            return shifts
        days = asker.ask("init.shift_days", "mon-fri", _days)
        start = asker.ask("init.shift_start", None, _time)
        end = asker.ask("init.shift_end", None, _time)
        shift = {"name": name, "days": days, "start": start, "end": end}
        try:
            Shift.model_validate(shift)
        except ValidationError as exc:
            print(f"  ✗ {_problem_text(exc)}", file=asker.stdout)
            continue
        shifts.append(shift)


def _link(asker: Asker) -> dict[str, Any]:
    transport = asker.choose("init.transport", ["tcp", "rtu-over-tcp", "rtu"], "tcp")
    link: dict[str, Any] = {"transport": transport}
    if transport == "rtu":
        link["serial_port"] = asker.ask("init.serial_port", "/dev/ttyUSB0", lambda a: a)
    else:
        link["host"] = asker.ask("init.host", None, _host)
        link["port"] = asker.ask("init.port", "502", _number(1, 65535))
    link["unit"] = asker.ask("init.unit", "1", _number(0, 255))
    return link


def _host(answer: str) -> str:
    if not answer or " " in answer or "/" in answer:
        raise _Invalid("init.bad_host")
    return answer


def _modbus(asker: Asker, how: str) -> dict[str, Any]:
    if how == "profile":
        ids = profile_ids()
        for number, profile_id in enumerate(ids, 1):
            profile = load_profile(profile_id)
            kind = translate(asker.lang, f"profiles.kind_{profile.kind.replace('-', '_')}")
            print(f"  {number}) {profile_id:<16} {kind}: {profile.name}", file=asker.stdout)
        chosen = asker.choose("init.profile", ids, None)
        link = _link(asker)
        # Serial settings from the profile unless the machine's link says otherwise.
        return {**link, "profile": chosen}
    link = _link(asker)
    asker.say("init.probe_intro")
    signals: list[dict[str, Any]] = []

    def signal_line(answer: str) -> dict[str, Any] | None:
        if not answer:
            if not signals:
                raise _Invalid("init.need_signal")
            return None
        return _pasted_signal(answer, {s["name"] for s in signals})

    while True:
        entry = asker.ask("init.probe_line", None, signal_line)
        if entry is None:
            break
        if entry["name"] == "value":  # what `probe find` calls it until told
            taken = {s["name"] for s in signals}
            entry["name"] = asker.ask("init.signal_name", None, _new_name(taken))
        signals.append(entry)
    return {**link, "signals": signals}


def _new_name(taken: set[str]) -> Callable[[str], str]:
    def check(answer: str) -> str:
        name = _name(answer)
        if name in taken:
            raise _Invalid("init.duplicate", name=name)
        return name

    return check


def _pasted_signal(answer: str, taken: set[str]) -> dict[str, Any]:
    """A line `aguante probe find` printed (`- {name: …, table: …}`), or a watch spec
    (`temp=holding:1:int16*0.1`), checked as a config signal."""
    from collector.probe_cli import parse_signal_spec

    text = answer.strip()
    if text.startswith(("-", "{")):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            raise _Invalid("init.bad_signal") from None
        if isinstance(data, list) and len(data) == 1:
            data = data[0]
        if not isinstance(data, dict):
            raise _Invalid("init.bad_signal")
        entry: dict[str, Any] = data
    else:
        try:
            entry = parse_signal_spec(text)
        except ValueError:
            raise _Invalid("init.bad_signal") from None
        if "=" not in text.split(":", 1)[0]:
            entry["name"] = "value"
    entry.setdefault("name", "value")
    Signal.model_validate(entry)  # a ValidationError names what is wrong
    if entry["name"] in taken:
        raise _Invalid("init.duplicate", name=entry["name"])
    return entry


def _board(asker: Asker) -> dict[str, Any]:
    firmware = asker.choose("init.firmware", list(FIRMWARES), "tasmota")
    topic = asker.ask(f"init.topic_{firmware}", None, _topic)
    signals: list[dict[str, Any]]
    if firmware == "tasmota":
        signals = [
            {"name": "power", "path": "ENERGY.Power", "unit": "W"},
            {"name": "current", "path": "ENERGY.Current", "unit": "A"},
            {"name": "energy_total", "path": "ENERGY.Total", "unit": "kWh"},
        ]
    elif firmware == "shelly":
        signals = [
            {"name": "power", "path": "switch:0.apower", "unit": "W"},
            {"name": "current", "path": "switch:0.current", "unit": "A"},
            {"name": "voltage", "path": "switch:0.voltage", "unit": "V"},
        ]
    elif firmware == "esphome":
        sensors = asker.ask("init.esphome_sensors", None, _names)
        binary = asker.ask("init.esphome_binary", "", lambda a: _names(a) if a else [])
        signals = [{"name": n} for n in sensors]
        signals += [{"name": n, "type": "bool"} for n in binary if n not in sensors]
    else:
        signals = asker.ask("init.json_fields", None, _json_fields)
    board = {"topic": topic, "format": firmware, "signals": signals}
    MqttSubscription.model_validate(board)
    return board


def _topic(answer: str) -> str:
    if not answer or any(c in answer for c in "#+ ") or answer.startswith("/"):
        raise _Invalid("init.bad_topic")
    return answer


def _json_fields(answer: str) -> list[dict[str, Any]]:
    fields: list[dict[str, Any]] = []
    for part in (p.strip() for p in answer.split(",")):
        if not part:
            continue
        name, _, path = part.partition("=")
        fields.append({"name": _name(name.strip()), "path": path.strip() or name.strip()})
    if not fields:
        raise _Invalid("init.need_one")
    return fields


def _state(asker: Asker, signals: list[tuple[str, str]]) -> dict[str, Any] | None:
    names = [name for name, kind in signals if kind in ("bool", "int", "float")]
    if not names:
        return None

    def which(answer: str) -> str:
        if not answer:
            return ""
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        if answer in names:
            return answer
        raise _Invalid("init.bad_choice", choices=", ".join(names))

    listed = ", ".join(f"{i}) {n}" for i, n in enumerate(names, 1))
    chosen = asker.ask("init.running_signal", "", which, signals=listed)
    if not chosen:
        return None
    kind = dict(signals)[chosen]
    if kind == "bool":
        return {"running": {"signal": chosen, "equals": True}}
    above = asker.ask("init.running_above", None, _float, signal=chosen)
    return {"running": {"signal": chosen, "above": above}}
