"""The factory config file: pydantic models, loading, environment overrides and readable errors.

Everything a collector, the maintenance service and the dashboards know about a plant comes from
one YAML file validated here before any socket opens. Secrets never come from the file.
"""

from __future__ import annotations

import datetime as dt
import difflib
import itertools
import os
import re
import sys
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.topics import AVAILABILITY_KINDS, filters_overlap, to_filter, topic_layout
from collector.yamlfile import load_yaml

__all__ = [
    "DEFAULT_STOP_REASONS",
    "ENV_OVERRIDES",
    "LANGUAGES",
    "REGISTER_COUNT",
    "RULE_KINDS",
    "WEEKDAYS",
    "Break",
    "BufferConfig",
    "Calendar",
    "CalendarChange",
    "Condition",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "Counters",
    "Crew",
    "Drift",
    "EmailNotification",
    "ErrorRate",
    "InfluxDBConfig",
    "Language",
    "Machine",
    "MaintenanceConfig",
    "Meter",
    "ModbusDevice",
    "MqttConfig",
    "MqttNotification",
    "MqttSignal",
    "MqttSubscription",
    "MqttTLS",
    "NetworkSharing",
    "Notification",
    "Offline",
    "PartCounter",
    "RateOfChange",
    "Rule",
    "Sector",
    "Severity",
    "Shift",
    "Signal",
    "StateName",
    "StateRules",
    "StopReason",
    "Threshold",
    "WebConfig",
    "WebhookNotification",
    "apply_environment",
    "config_warnings",
    "json_schema",
    "load_config",
    "load_config_or_say",
    "modicon_address",
    "mqtt_url",
    "parse_config",
    "parse_yaml_model",
    "read_config_file",
    "topic_prefix",
    "validation_problems",
]

_M = TypeVar("_M", bound=BaseModel)

Table = Literal["coil", "discrete", "holding", "input"]
SignalType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
Order = Literal["big", "little"]
Transport = Literal["tcp", "rtu-over-tcp", "rtu"]

# Registers each numeric type occupies; strings say how many with `count`.
REGISTER_COUNT: dict[str, int] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}

# order shorthand → (byte_order, word_order); A is the most significant byte.
_ORDERS: dict[str, tuple[Order, Order]] = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}

# Modicon's 1-based numbering: the leading digit names the table.
_MODICON_TABLES: dict[str, Table] = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]

# Connection settings a user may override from the environment, and where they land.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "AGUANTE_INFLUXDB_URL": ("influxdb", "url"),
    "AGUANTE_INFLUXDB_DATABASE": ("influxdb", "database"),
    "AGUANTE_INFLUXDB_USERNAME": ("influxdb", "username"),
    "AGUANTE_INFLUXDB_PASSWORD": ("influxdb", "password"),
    "AGUANTE_INFLUXDB_TOKEN": ("influxdb", "token"),
    "AGUANTE_MQTT_URL": ("mqtt", "url"),
    "AGUANTE_MQTT_USERNAME": ("mqtt", "username"),
    "AGUANTE_MQTT_PASSWORD": ("mqtt", "password"),
    "AGUANTE_STORE_URL": ("maintenance", "store"),
    "AGUANTE_SECRET_KEY": ("maintenance.web", "secret_key"),
    "AGUANTE_WEB_HOST": ("maintenance.web", "host"),
    "AGUANTE_WEB_PORT": ("maintenance.web", "port"),
    "AGUANTE_NETWORK_URL": ("network", "url"),
    "AGUANTE_NETWORK_USERNAME": ("network", "username"),
    "AGUANTE_NETWORK_PASSWORD": ("network", "password"),
}
# Settings that only the environment may give: section → key → variable.
_SECRETS = {
    "influxdb": {"password": "AGUANTE_INFLUXDB_PASSWORD", "token": "AGUANTE_INFLUXDB_TOKEN"},
    "mqtt": {"password": "AGUANTE_MQTT_PASSWORD"},
    "maintenance.web": {"secret_key": "AGUANTE_SECRET_KEY"},
    "network": {"password": "AGUANTE_NETWORK_PASSWORD"},
}


class _FieldProblem(ValueError):
    """Raised by a model validator to name the field at fault, not just the model."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)


class InfluxDBConfig(_Model):
    """Where readings are stored: InfluxDB's v1 HTTP API (1.x, 2.x compatibility, 3.x)."""

    url: str = Field("http://127.0.0.1:8086", description="Base URL of the InfluxDB HTTP API.")
    database: Name = "aguante"
    retention_policy: str | None = None
    rollup_retention_policy: str | None = Field(
        "aguante_rollups",
        description="Where the hourly and daily sums go: a retention policy of long shards (52 "
        "weeks, created with the database) so a year of KPIs reads one shard, not 52. null: "
        "with everything else (InfluxDB 2.x/3.x, where policies are buckets or absent).",
    )
    username: str | None = Field(None, description="Also AGUANTE_INFLUXDB_USERNAME.")
    password: str | None = Field(
        None, description="Only from AGUANTE_INFLUXDB_PASSWORD, never from the file."
    )
    token: str | None = Field(None, description="Only from AGUANTE_INFLUXDB_TOKEN.")
    create_database: bool = Field(True, description="Run CREATE DATABASE on start (idempotent).")
    gzip: bool = False
    timeout: float = Field(
        5.0,
        gt=0,
        le=120,
        description="Seconds a write may take in all, connecting and the answer included, "
        "plus one per 64 KiB it sends (http://).",
    )
    batch_size: int = Field(5000, ge=1, le=50_000)
    flush_interval: float = Field(1.0, gt=0, le=60)
    max_buffered_points: int = Field(
        100_000,
        ge=1000,
        description="Lines kept in memory ahead of the writer; beyond them (a long outage) they "
        "are read back from the disk buffer, so memory stays bounded.",
    )
    quarantine_file: str = Field(
        "aguante-quarantine.jsonl",
        description="Where lines InfluxDB refuses for good are kept for a later replay.",
    )

    @model_validator(mode="after")
    def _batch_fits(self) -> InfluxDBConfig:
        if self.batch_size > self.max_buffered_points:
            raise _FieldProblem(
                "batch_size",
                f"{self.batch_size} is more than max_buffered_points ({self.max_buffered_points})",
            )
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http(s) URL, e.g. http://127.0.0.1:8086")
        if "@" in re.split(r"[/?#]", url.split("://", 1)[1], maxsplit=1)[0]:
            # Not echoed: the part before the @ is a password.
            raise ValueError(
                "the URL carries a user name or password, which are not read from it: set "
                "AGUANTE_INFLUXDB_USERNAME and AGUANTE_INFLUXDB_PASSWORD in the environment"
            )
        return url.rstrip("/")


class BufferConfig(_Model):
    """The durable buffer between the collector and InfluxDB (docs/buffer.md)."""

    directory: str = Field(
        "aguante-buffer",
        description="Where readings wait on disk until InfluxDB has stored them; one directory "
        "per collector.",
    )
    max_bytes: ByteSize = Field(
        ByteSize(4 * 1024**3),
        description="Size limit on disk, e.g. 4GiB or 500MB (the default holds about 4 days of "
        "examples/metalworks.yaml polled twice as often, docs/buffer.md); see when_full.",
    )
    segment_bytes: ByteSize = Field(
        ByteSize(32 * 1024**2),
        description="Size of one segment file; the buffer drops or deletes whole segments.",
    )
    fsync_interval: float = Field(
        1.0,
        ge=0,
        le=60,
        description="At most this many seconds of readings are at risk on a power cut (a killed "
        "process loses nothing); 0 syncs every write, which wears SD cards.",
    )
    when_full: Literal["drop_oldest", "drop_newest"] = Field(
        "drop_oldest",
        description="What to lose when max_bytes is reached: the oldest segment, or the newest "
        "readings. Either way it is counted (collector measurement, `dropped`) and logged.",
    )

    @model_validator(mode="after")
    def _segments_fit(self) -> BufferConfig:
        if self.segment_bytes < 4096:
            raise _FieldProblem(
                "segment_bytes", f"{self.segment_bytes.human_readable()} is less than 4 KiB"
            )
        if self.max_bytes < 4 * self.segment_bytes:
            raise _FieldProblem(
                "max_bytes",
                f"{self.max_bytes.human_readable()} is less than 4 × segment_bytes "
                f"({self.segment_bytes.human_readable()}); "
                "when full the buffer drops a whole segment, which must be a small part of it",
            )
        return self


class Sector(_Model):
    """A part of the plant (press shop, turning, furnaces): a tag on every point of its machines."""

    id: Name
    name: str | None = None


class Signal(_Model):
    """One value of a machine read from a Modbus table and decoded."""

    name: Name = Field(description="The InfluxDB field name; keeps one type forever.")
    table: Table | None = Field(None, description="Implied when written as `register: 40001`.")
    address: int | None = Field(None, ge=0, le=65535, description="0-based, as on the wire.")
    # `register` would shadow ABCMeta.register, so the attribute has another name.
    modicon: int | str | None = Field(
        None,
        alias="register",
        description="1-based Modicon number (40001 = holding address 0), written explicitly.",
    )
    type: SignalType = "uint16"
    count: int | None = Field(None, ge=1, le=125, description="Registers; required for string.")
    bit: int | None = Field(
        None, ge=0, le=15, description="Bit of a register, 0 = least significant."
    )
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    store_as: Literal["float"] | None = Field(
        None,
        description="Store an unscaled integer as a float, to share a field name with a float.",
    )

    @field_validator("byte_order", "word_order", mode="before")
    @classmethod
    def _order_hint(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in _ORDERS:
            raise ValueError(
                f"{value!r} is not big or little; "
                f"for {value.upper()} write `order: {value.upper()}`"
            )
        return value

    @field_validator("order", mode="before")
    @classmethod
    def _order_upper(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in _ORDERS:
            return value.upper()
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Signal:
        if (self.address is None) == (self.modicon is None):
            raise _FieldProblem(
                "address",
                "give exactly one of `address` (0-based, as on the wire) or `register` "
                "(1-based Modicon number such as 40001)",
            )
        if self.modicon is not None:
            table, address = _modicon(self.modicon)
            if self.table is not None and self.table != table:
                raise _FieldProblem(
                    "table", f"register {self.modicon} is in the {table} table, not {self.table}"
                )
            object.__setattr__(self, "table", table)
            object.__setattr__(self, "address", address)
        if self.table is None:
            raise _FieldProblem("table", "required key missing: coil, discrete, holding or input")
        if self.order is not None and (self.byte_order or self.word_order):
            raise _FieldProblem("order", "give either `order` or `byte_order`/`word_order`")
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise _FieldProblem(
                "type", f"a {self.table} holds one bit: the type must be bool, not {self.type}"
            )
        if self.bit is not None and (bit_table or self.type != "bool"):
            raise _FieldProblem("bit", "only for a bool taken from a holding or input register")
        if self.type == "bool" and not bit_table and self.bit is None:
            raise _FieldProblem("bit", f"required for a bool in a {self.table} register (0-15)")
        size = REGISTER_COUNT.get(self.type)
        if size is None and self.count is None:
            raise _FieldProblem("count", "required with type string (registers, 2 characters each)")
        if size is not None and self.count is not None and self.count != size:
            too = "too small" if self.count < size else "too large"
            raise _FieldProblem(
                "count",
                f"{self.count} is {too} for type {self.type}, which takes {size} register(s); "
                "leave `count` out",
            )
        if self.type == "string" and self.orders[1] == "little":
            raise _FieldProblem(
                "order",
                "a string keeps its characters in register order; only the bytes within a "
                "register can swap: use ABCD or BADC (byte_order)",
            )
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise _FieldProblem("scale", f"scale and offset do not apply to type {self.type}")
        if self.scale == 0:
            raise _FieldProblem("scale", "0 would turn every value into the offset")
        if self.wire_address + self.register_count > 65536:
            raise _FieldProblem("address", "the signal runs past the last Modbus address (65535)")
        return self

    @property
    def wire_address(self) -> int:
        assert self.address is not None
        return self.address

    @property
    def wire_table(self) -> Table:
        assert self.table is not None
        return self.table

    @property
    def register_count(self) -> int:
        """Registers (or bits, in coil/discrete tables) this signal occupies."""
        if self.type == "string":
            assert self.count is not None
            return self.count
        return REGISTER_COUNT[self.type]

    @property
    def orders(self) -> tuple[Order, Order]:
        """(byte order within a register, word order across registers)."""
        if self.order is not None:
            return _ORDERS[self.order]
        return (self.byte_order or "big", self.word_order or "big")

    @property
    def field_kind(self) -> Literal["bool", "int", "float", "str"]:
        """The InfluxDB field type, fixed by the config so a signal never changes type."""
        if self.type == "bool":
            return "bool"
        if self.type == "string":
            return "str"
        if self.store_as == "float" or self.type.startswith("float"):
            return "float"
        if self.scale != 1.0 or self.offset != 0.0:
            return "float"
        return "int"


def modicon_address(register: int | str) -> tuple[Table, int]:
    """(table, 0-based address) of a 1-based Modicon number: 40001 → holding 0, 30010 →
    input 9; ValueError for what is not one."""
    return _modicon(register)


def _modicon(register: int | str) -> tuple[Table, int]:
    # YAML reads 00001 as the number 1, so coils are written quoted ("00001") to keep the zeros.
    digits = str(register).strip()
    if digits.isdigit() and len(digits) in (5, 6) and digits[0] in _MODICON_TABLES:
        number = int(digits[1:])
        if number >= 1:
            return _MODICON_TABLES[digits[0]], number - 1
    raise _FieldProblem(
        "register",
        f"{register!r} is not a Modicon number: 40001 is holding address 0, 30001 input, "
        '10001 discrete, "00001" (quoted) coil, 6 digits above 9999; '
        "or give the 0-based `address` instead",
    )


class ModbusDevice(_Model):
    """How to reach a machine's controller or meter, and the quirks it has."""

    transport: Transport = "tcp"
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    serial_port: str | None = Field(None, description="For rtu: /dev/ttyUSB0, /dev/ttyS1 …")
    baudrate: int = Field(9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(1, ge=0, le=255, description="Modbus unit (slave) id.")
    poll_interval: float = Field(1.0, gt=0, le=3600, description="Seconds between polls.")
    timeout: float = Field(1.0, gt=0, le=60, description="Seconds to wait for an answer.")
    retries: int = Field(1, ge=0, le=10)
    max_registers_per_request: int = Field(125, ge=1, le=125)
    max_bits_per_request: int = Field(2000, ge=1, le=2000)
    gap_fill: int = Field(
        10, ge=0, le=124, description="Unused registers read through to save a request."
    )
    one_request_per_signal: bool = False
    pause_between_requests: float = Field(0.0, ge=0, le=10)
    pause_after_connect: float = Field(0.0, ge=0, le=30)
    profile: str | None = Field(
        None,
        description="A device profile (`aguante profiles`): its signals and serial settings; "
        "what is written here wins, a signal of the same name changes only the keys it gives.",
    )
    profile_signals: list[Name] | None = Field(
        None, description="Only these of the profile's signals (all of them when left out)."
    )
    signals: list[Signal] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("profile") is None:
            if data.get("profile_signals") is not None:
                raise _FieldProblem("profile_signals", "only with a `profile`")
            return data
        from collector.profiles import ProfileError, apply_profile

        try:
            return apply_profile(data)
        except ProfileError as exc:
            where = "profile_signals" if str(exc).startswith("profile_signals") else "profile"
            raise _FieldProblem(where, str(exc).removeprefix("profile_signals: ")) from None

    @model_validator(mode="after")
    def _consistent(self) -> ModbusDevice:
        if self.transport == "rtu":
            if not self.serial_port:
                raise _FieldProblem("serial_port", "required with transport rtu (/dev/ttyUSB0 …)")
            if self.host or self.port:
                raise _FieldProblem("host", "only for tcp and rtu-over-tcp; rtu uses serial_port")
        else:
            if not self.host or self.port is None:
                missing = "host" if not self.host else "port"
                raise _FieldProblem(missing, f"required with transport {self.transport}")
            if self.serial_port:
                raise _FieldProblem("serial_port", "only for transport rtu")
        names: set[str] = set()
        for index, signal in enumerate(self.signals):
            if signal.name in names:
                raise _FieldProblem(f"signals[{index}].name", f"{signal.name!r} is used twice")
            names.add(signal.name)
        _check_overlaps(self.signals)
        limit = self.max_registers_per_request
        for index, signal in enumerate(self.signals):
            if signal.register_count > limit:
                raise _FieldProblem(
                    f"signals[{index}].count",
                    f"{signal.register_count} registers is more than "
                    f"max_registers_per_request ({limit})",
                )
        return self

    @property
    def connection_key(self) -> str:
        """Devices with the same key share one connection, one task and one request queue."""
        if self.transport == "rtu":
            return f"rtu:{self.serial_port}"
        return f"{self.transport}://{self.host}:{self.port}"


def _check_overlaps(signals: list[Signal]) -> None:
    # Bits of one register may be shared by several bool signals; anything else overlapping is a
    # copy-paste mistake that would store one value under two names.
    taken: dict[tuple[str, int], tuple[str, int | None]] = {}
    for index, signal in enumerate(signals):
        for address in range(signal.wire_address, signal.wire_address + signal.register_count):
            key = (signal.wire_table, address)
            if key in taken:
                other, other_bit = taken[key]
                if signal.bit is not None and other_bit is not None and signal.bit != other_bit:
                    continue
                raise _FieldProblem(
                    f"signals[{index}]",
                    f"{signal.name!r} overlaps {other!r} at {signal.wire_table} address {address}",
                )
            taken[key] = (signal.name, signal.bit)


PayloadFormat = Literal["plain", "json", "tasmota", "esphome", "shelly", "sparkplug"]


class MqttSignal(_Model):
    """One value of a machine taken from MQTT messages."""

    name: Name = Field(description="The InfluxDB field name; keeps one type forever.")
    path: str | None = Field(
        None,
        description="Where the value is in the message: a JSON path (ENERGY.Power, "
        "sensors[0].temp), an ESPHome sensor id, a Shelly component.field (switch:0.apower), a "
        "Sparkplug metric name. Defaults to the signal's name.",
    )
    type: Literal["float", "int", "bool", "string"] = "float"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MqttSignal:
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise _FieldProblem("scale", f"scale and offset do not apply to type {self.type}")
        if self.scale == 0:
            raise _FieldProblem("scale", "0 would turn every value into the offset")
        return self

    @property
    def selector(self) -> str:
        return self.path if self.path is not None else self.name

    @property
    def field_kind(self) -> Literal["bool", "int", "float", "str"]:
        if self.type == "bool":
            return "bool"
        if self.type == "string":
            return "str"
        if self.type == "float" or self.scale != 1.0 or self.offset != 0.0:
            return "float"
        return "int"


class MqttSubscription(_Model):
    """Messages of one board (or, with a {machine} placeholder, of many alike) and their signals.

    `topic` by format: plain and json — the whole topic (MQTT wildcards + and # allowed);
    tasmota — the device topic (tele/<topic>/SENSOR, STATE, LWT); esphome — the node's topic
    prefix (<prefix>/sensor/<id>/state, binary_sensor, status); shelly — the device prefix
    (<prefix>/status/<component>, <prefix>/online); sparkplug — group/edge_node[/device].
    `{machine}` stands for one topic level holding a machine id; with format plain, `{signal}`
    for one level holding a signal's path.
    """

    topic: str = Field(min_length=1)
    format: PayloadFormat = "json"
    machine: Name | None = Field(None, description="Implied inside a machine's `mqtt:` list.")
    signals: list[MqttSignal] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> MqttSubscription:
        problem = _topic_problem(self.topic, self.format)
        if problem:
            raise _FieldProblem("topic", problem)
        names: set[str] = set()
        for index, signal in enumerate(self.signals):
            if signal.name in names:
                raise _FieldProblem(f"signals[{index}].name", f"{signal.name!r} is used twice")
            names.add(signal.name)
        if self.format in ("plain",) and "{signal}" not in self.topic and len(self.signals) > 1:
            raise _FieldProblem(
                "signals",
                "a plain payload is one value: give one signal, or put {signal} in the topic",
            )
        return self


def _topic_problem(topic: str, payload_format: str) -> str | None:
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"{topic!r}: '#' must be a whole level, and the last"
        if "+" in level and level != "+":
            return f"{topic!r}: '+' must be a whole level"
        if "{" in level or "}" in level:
            if level not in ("{machine}", "{signal}"):
                return f"{topic!r}: a placeholder is a whole level, {{machine}} or {{signal}}"
            if level == "{signal}" and payload_format != "plain":
                return f"{topic!r}: {{signal}} is only for format plain"
    if topic.count("{machine}") > 1 or topic.count("{signal}") > 1:
        return f"{topic!r}: each placeholder at most once"
    if payload_format not in ("plain", "json") and ("+" in levels or "#" in levels):
        return f"{topic!r}: format {payload_format} builds its topics from this; no + or #"
    if payload_format == "sparkplug" and len(levels) not in (2, 3):
        return f"{topic!r}: for sparkplug write group/edge_node or group/edge_node/device"
    return None


class MqttTLS(_Model):
    """TLS for brokers that require it; files are PEM."""

    ca_file: str | None = Field(None, description="CA to trust; the system's when left out.")
    cert_file: str | None = Field(None, description="Client certificate, with key_file.")
    key_file: str | None = None
    insecure: bool = Field(False, description="Skip the host name check (self-signed LAN box).")

    @model_validator(mode="after")
    def _pair(self) -> MqttTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise _FieldProblem("key_file", "cert_file and key_file go together")
        return self


class MqttConfig(_Model):
    """The MQTT broker the add-on sensors publish to, and subscriptions for many machines."""

    url: str = Field(
        "mqtt://127.0.0.1:1883", description="mqtt://host:port or mqtts:// (TLS). AGUANTE_MQTT_URL."
    )
    client_id: str | None = Field(
        None,
        description="Stable, so the broker keeps the session while the collector is away. "
        "Default aguante-<factory>.",
    )
    username: str | None = Field(None, description="Also AGUANTE_MQTT_USERNAME.")
    password: str | None = Field(None, description="Only from AGUANTE_MQTT_PASSWORD.")
    tls: MqttTLS | None = None
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5, le=3600)
    max_payload: int = Field(65536, ge=64, le=16 * 1024 * 1024, description="Bytes.")
    read_pause: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Seconds the link is left unread after a read that brought fewer than 8 "
        "messages, so a trickle costs one wake-up per handful; 0 reads each at once (for a "
        "broker that lets fewer than 8 messages wait for acknowledgement, which the pause "
        "would hold to about 20 × that many a second).",
    )
    subscriptions: list[MqttSubscription] = Field(default_factory=list)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        return mqtt_url(url)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.url.startswith("mqtts") else 1883)

    @property
    def use_tls(self) -> bool:
        return self.url.startswith("mqtts://") or self.tls is not None


class NetworkSharing(_Model):
    """What this plant shares with its network of plants, and how (docs/network.md). Nothing
    leaves the plant without a `url`; by default only hourly rollups per process."""

    url: str | None = Field(
        None,
        description="The network's MQTT broker, mqtts://host:8883; AGUANTE_NETWORK_URL. Left "
        "out: nothing is shared.",
    )
    plant: Name | None = Field(
        None, description="This plant's id in the network (its broker user); default: factory."
    )
    username: str | None = Field(None, description="Also AGUANTE_NETWORK_USERNAME.")
    password: str | None = Field(None, description="Only from AGUANTE_NETWORK_PASSWORD.")
    tls: MqttTLS | None = None
    share: Literal["none", "groups", "machines"] = Field(
        "groups",
        description="groups: hourly rollups per process (or sector); machines: per machine too; "
        "none: stop sharing (what was shared stays with the network).",
    )
    group_by: Literal["process", "sector"] = Field(
        "process", description="Group machines by their `process` (else sector) or by sector."
    )
    named: bool = Field(
        False, description="Show the plant under its name; otherwise under an alias only."
    )
    name: str | None = Field(None, description="The name to show when named (default: factory).")
    since: dt.date | None = Field(None, description="Share no hour before this day.")
    revise_hours: int = Field(
        72,
        ge=1,
        le=24 * 31,
        description="Hours sent again when they change (stop reasons given late).",
    )
    backfill_days: int = Field(
        31,
        ge=1,
        le=3660,
        description="With no record of what was sent (the first start, a lost state file), "
        "hours this many days back are sent (the network overwrites what it has).",
    )
    interval: float = Field(300.0, ge=5, le=3600, description="Seconds between sharing rounds.")
    topic_prefix: str = Field("aguante/network", min_length=1)
    partitions: int = Field(
        1, ge=1, le=1024, description="As the network's config says (topics by plant hash)."
    )
    state_file: str = Field(
        "aguante-network.json", description="What was shared, kept across restarts."
    )
    timeout: float = Field(30.0, gt=0, le=600, description="Seconds a round may wait.")

    @field_validator("url")
    @classmethod
    def _network_url(cls, url: str | None) -> str | None:
        return url if url is None else mqtt_url(url)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return topic_prefix(prefix)


def mqtt_url(url: str) -> str:
    """An mqtt:// or mqtts:// URL of a broker, without a trailing slash; ValueError else."""
    if not re.match(r"^mqtts?://[^/\s:]+(:\d+)?/?$", url):
        raise ValueError(f"{url!r} is not an MQTT URL, e.g. mqtt://127.0.0.1:1883")
    return url.rstrip("/")


def topic_prefix(prefix: str) -> str:
    """The first levels of a network's topics: no wildcard, no / at either end."""
    if any(c in prefix for c in "+#\0") or prefix.startswith("/") or prefix.endswith("/"):
        raise ValueError(f"{prefix!r}: a topic without + or # and without / at either end")
    return prefix


# -- capacity use: machine state, counters, shifts, stop reasons (docs/capacity.md) -------------

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Language = Literal["es", "pt-BR", "en"]
LANGUAGES: tuple[Language, ...] = ("es", "pt-BR", "en")
ReasonCategory = Literal["demand", "supply", "machine", "people", "planned", "other"]
StateName = Literal["unknown", "off", "idle", "running", "down"]
ConditionValue = bool | int | float | str


def _clock_time(value: Any) -> Any:
    # YAML 1.1 reads an unquoted 06:30 as the base-60 number 390: read it back as a time.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
        return dt.time(value // 60, value % 60)
    if isinstance(value, str) and value.strip() in ("24:00", "24:00:00"):
        raise ValueError("write midnight as 00:00")
    return value


ClockTime = Annotated[dt.time, BeforeValidator(_clock_time)]


def _minutes(t: dt.time) -> int:
    return t.hour * 60 + t.minute


class Break(_Model):
    """A pause inside a shift (lunch, a tea break): not planned time."""

    start: ClockTime
    end: ClockTime


ShiftName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[\w.\-]+$")]


class Shift(_Model):
    """A shift on some weekdays, in the plant's time zone; it may end the next day."""

    name: ShiftName = Field(description="Letters of any language, digits, _ . -: mañana, noite.")
    days: list[Weekday] = Field(min_length=1, description="The days the shift starts on.")
    start: ClockTime = Field(description='"HH:MM"; quote it in YAML.')
    end: ClockTime = Field(description="Before `start` when the shift ends the next day.")
    breaks: list[Break] = Field(default_factory=list)

    @field_validator("days", mode="before")
    @classmethod
    def _day_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [v.lower()[:3] if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Shift:
        if self.start == self.end:
            raise _FieldProblem("end", "equal to start; a 24-hour shift is two shifts")
        length = self.length_minutes
        taken: list[tuple[int, int]] = []
        for index, pause in enumerate(self.breaks):
            begin = (_minutes(pause.start) - _minutes(self.start)) % (24 * 60)
            end = (_minutes(pause.end) - _minutes(self.start)) % (24 * 60)
            if not 0 <= begin < end <= length:
                raise _FieldProblem(
                    f"breaks[{index}]",
                    f"{pause.start:%H:%M}-{pause.end:%H:%M} is not inside the shift "
                    f"{self.start:%H:%M}-{self.end:%H:%M}",
                )
            if any(begin < e and b < end for b, e in taken):
                raise _FieldProblem(f"breaks[{index}]", "overlaps another break")
            taken.append((begin, end))
        return self

    @property
    def length_minutes(self) -> int:
        return (_minutes(self.end) - _minutes(self.start)) % (24 * 60)


def _check_shift_overlaps(shifts: list[Shift], where: str) -> None:
    # Minutes of the week each shift covers; two shifts at once would count planned time twice.
    week = 7 * 24 * 60
    taken: list[tuple[int, int, str]] = []
    for index, shift in enumerate(shifts):
        for day in shift.days:
            begin = WEEKDAYS.index(day) * 24 * 60 + _minutes(shift.start)
            for b, e, other in taken:
                for offset in (-week, 0, week):
                    if begin < e + offset and b + offset < begin + shift.length_minutes:
                        raise _FieldProblem(
                            f"{where}[{index}]",
                            f"{shift.name!r} starting on {day} overlaps {other!r}; planned "
                            "time would count twice",
                        )
            taken.append((begin, begin + shift.length_minutes, shift.name))
    names = [s.name for s in shifts]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise _FieldProblem(f"{where}[{index}].name", f"{name!r} is used twice")


class CalendarChange(_Model):
    """A period with other shifts than the usual week, e.g. a second shift voted for a month."""

    start: dt.date = Field(alias="from", description="First day of the period.")
    end: dt.date = Field(alias="to", description="Last day of the period (included).")
    note: str | None = None
    shifts: list[Shift] = Field(description="The shifts in force then; [] for none at all.")

    @model_validator(mode="after")
    def _consistent(self) -> CalendarChange:
        if self.end < self.start:
            raise _FieldProblem("to", f"{self.end} is before from ({self.start})")
        _check_shift_overlaps(self.shifts, "shifts")
        return self


class Calendar(_Model):
    """When the plant plans to work; time outside shifts is not planned time."""

    shifts: list[Shift] = Field(default_factory=list)
    holidays: list[dt.date] = Field(default_factory=list, description="No shift starts then.")
    changes: list[CalendarChange] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Calendar:
        _check_shift_overlaps(self.shifts, "shifts")
        spans = sorted((c.start, c.end, i) for i, c in enumerate(self.changes))
        for (_, end, _), (start, _, index) in itertools.pairwise(spans):
            if start <= end:
                raise _FieldProblem(f"changes[{index}].from", "overlaps another change's period")
        return self


class Condition(_Model):
    """When a state holds, from one signal of the machine."""

    signal: Name
    equals: ConditionValue | list[ConditionValue] | None = None
    above: float | None = None
    clear_below: float | None = Field(None, description="With `above`: hysteresis.")
    below: float | None = None
    clear_above: float | None = Field(None, description="With `below`: hysteresis.")
    advanced_within: float | None = Field(
        None, gt=0, le=86400, description="Seconds: the signal (a counter) changed lately."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Condition:
        given = [
            k
            for k in ("equals", "above", "below", "advanced_within")
            if getattr(self, k) is not None
        ]
        if len(given) != 1:
            raise _FieldProblem(
                "signal" if not given else given[1],
                "give exactly one of equals, above, below, advanced_within",
            )
        if self.clear_below is not None:
            if self.above is None:
                raise _FieldProblem("clear_below", "only with `above`")
            if self.clear_below > self.above:
                raise _FieldProblem(
                    "clear_below", f"{self.clear_below} is above `above` ({self.above})"
                )
        if self.clear_above is not None:
            if self.below is None:
                raise _FieldProblem("clear_above", "only with `below`")
            if self.clear_above < self.below:
                raise _FieldProblem(
                    "clear_above", f"{self.clear_above} is below `below` ({self.below})"
                )
        return self


class StateRules(_Model):
    """How a machine's state is recognised from its signals (docs/capacity.md)."""

    running: Condition
    down: Condition | None = None
    off: Condition | None = None
    min_duration: float = Field(
        5.0, ge=0, le=600, description="Seconds a new state must hold before it counts."
    )
    micro_stop: float = Field(
        120.0, ge=0, le=3600, description="Stops shorter than this are micro-stops."
    )
    stale_after: float | None = Field(
        None,
        ge=0,
        le=86400,
        description="Seconds without a value before the state is unknown; 0 = only when the "
        "source says the device is gone. Default: 3 polls + timeout for Modbus signals, "
        "availability only for MQTT signals.",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_off(cls, data: Any) -> Any:
        # YAML 1.1 reads an unquoted `off:` key as the boolean false.
        if isinstance(data, dict) and False in data and "off" not in data:
            data = dict(data)
            data["off"] = data.pop(False)
        return data

    @property
    def conditions(self) -> dict[str, Condition]:
        found = {"off": self.off, "down": self.down, "running": self.running}
        return {state: c for state, c in found.items() if c is not None}


class PartCounter(_Model):
    """Parts from a counting register, or one part per rising edge of a boolean input."""

    signal: Name
    kind: Literal["counter", "pulse"] = "counter"
    wrap: Literal[16, 32, 64] | None = Field(
        None, description="Bits after which the counter starts over; from the Modbus type."
    )
    parts_per_count: int = Field(1, ge=1, le=10_000, description="E.g. 4 for a four-cavity mould.")
    max_step: int | None = Field(
        None, ge=1, description="A larger jump between two readings is a glitch, not parts."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PartCounter:
        if self.kind == "pulse" and self.wrap is not None:
            raise _FieldProblem("wrap", "a pulse input does not wrap; leave it out")
        return self


class Counters(_Model):
    produced: PartCounter | None = None
    rejected: PartCounter | None = None


class StopReason(_Model):
    """Why a machine stopped, as the plant names it; the category groups losses in reports."""

    id: Name
    category: ReasonCategory
    label: dict[Language, str] = Field(
        default_factory=dict, description="Its name per language; the default reasons have one."
    )

    @model_validator(mode="after")
    def _named(self) -> StopReason:
        if not self.label and self.id not in _DEFAULT_REASON_IDS:
            raise _FieldProblem("label", f"{self.id!r} needs a name: label: {{es: ..., en: ...}}")
        return self

    def name(self, language: Language) -> str:
        """Its name in a language, else the default reason's, else any name it has."""
        if language in self.label:
            return self.label[language]
        default = next((r for r in DEFAULT_STOP_REASONS if r.id == self.id), None)
        if default is not None and language in default.label:
            return default.label[language]
        return next(iter(self.label.values()), self.id)


_DEFAULT_REASON_IDS = frozenset(
    {
        "no_material",
        "no_orders",
        "breakdown",
        "waiting_maintenance",
        "no_operator",
        "power_cut",
        "setup",
        "planned_maintenance",
        "assembly",
        "other",
    }
)


def _reason(reason_id: str, category: ReasonCategory, es: str, pt: str, en: str) -> StopReason:
    return StopReason(id=reason_id, category=category, label={"es": es, "pt-BR": pt, "en": en})


DEFAULT_STOP_REASONS: tuple[StopReason, ...] = (
    _reason(
        "no_material",
        "supply",
        "Falta de materia prima",
        "Falta de matéria-prima",
        "No raw material",
    ),
    _reason("no_orders", "demand", "Sin pedidos", "Sem pedidos", "No orders"),
    _reason("breakdown", "machine", "Rotura", "Quebra", "Breakdown"),
    _reason(
        "waiting_maintenance",
        "machine",
        "Esperando mantenimiento",
        "Aguardando manutenção",
        "Waiting for maintenance",
    ),
    _reason("no_operator", "people", "Sin operario", "Sem operador", "No operator"),
    _reason("power_cut", "other", "Corte de luz", "Falta de energia", "Power cut"),
    _reason(
        "setup",
        "machine",
        "Preparación / cambio de matriz",
        "Preparação / troca de ferramenta",
        "Setup / changeover",
    ),
    _reason(
        "planned_maintenance",
        "planned",
        "Mantenimiento planificado",
        "Manutenção planejada",
        "Planned maintenance",
    ),
    _reason(
        "assembly", "planned", "Asamblea / reunión", "Assembleia / reunião", "Assembly / meeting"
    ),
    _reason("other", "other", "Otro", "Outro", "Other"),
)
assert {r.id for r in DEFAULT_STOP_REASONS} == _DEFAULT_REASON_IDS


# -- maintenance: rules, crews, notifications, the web app (docs/maintenance.md) -----------------

Severity = Literal["info", "warning", "critical"]


class Crew(_Model):
    """A maintenance crew (or a shift of workers): who gets which tickets, in which language."""

    id: Name
    name: str | None = None
    sectors: list[Name] = Field(
        default_factory=list, description="Sectors whose tickets it gets; [] = all of them."
    )
    language: Language | None = Field(None, description="Of its tickets; default the plant's.")
    notify: list[Name] = Field(default_factory=list, description="Notification targets (ids).")


class MqttNotification(_Model):
    type: Literal["mqtt"] = "mqtt"
    id: Name
    topic: str = Field("aguante/tickets", description="JSON per ticket event; the broker of mqtt:.")


class WebhookNotification(_Model):
    type: Literal["webhook"] = "webhook"
    id: Name
    url: str = Field(description="Receives a JSON POST per ticket event, retried until 2xx.")


class EmailNotification(_Model):
    type: Literal["email"] = "email"
    id: Name
    host: str
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = True
    sender: str = Field(description="From: address.")
    to: list[str] = Field(min_length=1)
    username: str | None = Field(
        None, description="Its password only from the environment: AGUANTE_SMTP_PASSWORD."
    )


Notification = Annotated[
    MqttNotification | WebhookNotification | EmailNotification, Field(discriminator="type")
]


class Threshold(_Model):
    """Above (or below) a level for a while; cleared past another level for a while."""

    signal: Name
    above: float | None = None
    below: float | None = None
    for_minutes: float = Field(5.0, gt=0, le=10_080)
    clear_below: float | None = Field(None, description="With above; default: above.")
    clear_above: float | None = Field(None, description="With below; default: below.")
    clear_minutes: float = Field(10.0, gt=0, le=10_080)

    @model_validator(mode="after")
    def _consistent(self) -> Threshold:
        if (self.above is None) == (self.below is None):
            raise _FieldProblem("above", "give exactly one of above or below")
        if self.clear_below is not None and (self.above is None or self.clear_below > self.above):
            raise _FieldProblem("clear_below", "only with above, and not above it")
        if self.clear_above is not None and (self.below is None or self.clear_above < self.below):
            raise _FieldProblem("clear_above", "only with below, and not below it")
        return self


class RateOfChange(_Model):
    """Rising (or falling) faster than a rate per hour over a window."""

    signal: Name
    rising_per_hour: float | None = Field(None, gt=0)
    falling_per_hour: float | None = Field(None, gt=0)
    window_minutes: float = Field(60.0, gt=0, le=10_080)

    @model_validator(mode="after")
    def _consistent(self) -> RateOfChange:
        if (self.rising_per_hour is None) == (self.falling_per_hour is None):
            raise _FieldProblem(
                "rising_per_hour", "give exactly one of rising_per_hour or falling_per_hour"
            )
        return self


class Drift(_Model):
    """The signal's recent median far from its own baseline (median and MAD over past days)."""

    signal: Name
    baseline_days: int = Field(14, ge=2, le=365)
    recent_minutes: float = Field(60.0, gt=0, le=1440)
    mads: float = Field(4.0, gt=0, description="How many MADs away raises the ticket.")
    clear_mads: float = Field(2.0, gt=0, description="Back within this many MADs clears it.")
    only_running: bool = Field(True, description="Compare only while the machine runs.")

    @model_validator(mode="after")
    def _consistent(self) -> Drift:
        if self.clear_mads > self.mads:
            raise _FieldProblem("clear_mads", f"{self.clear_mads} is more than mads ({self.mads})")
        return self


class Meter(_Model):
    """Preventive maintenance: due after run-hours, cycles or days since the last service of
    this kind was completed, whichever comes first."""

    run_hours: float | None = Field(None, gt=0)
    cycles: int | None = Field(None, gt=0, description="Parts produced, from utilization.")
    days: float | None = Field(None, gt=0)
    since: dt.date | None = Field(None, description="Counted from here before any service.")

    @model_validator(mode="after")
    def _consistent(self) -> Meter:
        if self.run_hours is None and self.cycles is None and self.days is None:
            raise _FieldProblem("run_hours", "give run_hours, cycles or days (or several)")
        return self


class Offline(_Model):
    """No reading from the machine (or of one signal) for a while."""

    minutes: float = Field(10.0, gt=0, le=10_080)
    signal: Name | None = Field(None, description="Default: any signal of the machine.")


class ErrorRate(_Model):
    """The machine's Modbus (or MQTT) errors per poll above a level over a window."""

    above: float = Field(0.2, gt=0, le=1, description="Errors per poll, 0-1.")
    window_minutes: float = Field(15.0, gt=0, le=1440)


class Rule(_Model):
    """One maintenance rule: for some machines, what raises a ticket, how bad, for whom."""

    id: Name
    machines: list[Name] = Field(default_factory=list, description="Ids; [] with kind or sector.")
    kind: str | None = Field(None, description="Every machine of this kind (machines[].kind).")
    sector: Name | None = None
    severity: Severity = "warning"
    crew: Name | None = Field(None, description="Default: the crews of the machine's sector.")
    title: dict[Language, str] = Field(
        default_factory=dict,
        description="Per language; placeholders {machine}, {value}, {limit}, {signal}...",
    )
    description: dict[Language, str] = Field(default_factory=dict)
    reopen_minutes: float = Field(
        1440.0, ge=0, description="A resolved ticket reopens if it fires again this soon."
    )
    threshold: Threshold | None = None
    rate: RateOfChange | None = None
    drift: Drift | None = None
    meter: Meter | None = None
    offline: Offline | None = None
    error_rate: ErrorRate | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        kinds = [k for k in RULE_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise _FieldProblem(
                "threshold", f"give exactly one of {', '.join(RULE_KINDS)}; got {kinds or 'none'}"
            )
        if not self.machines and self.kind is None and self.sector is None:
            raise _FieldProblem("machines", "say which machines: machines, kind or sector")
        return self

    @property
    def test(self) -> str:
        """Which kind of rule it is: threshold, rate, drift, meter, offline or error_rate."""
        return next(k for k in RULE_KINDS if getattr(self, k) is not None)

    @property
    def signal(self) -> str | None:
        spec = getattr(self, self.test)
        return getattr(spec, "signal", None)


RULE_KINDS = ("threshold", "rate", "drift", "meter", "offline", "error_rate")


class WebConfig(_Model):
    """The crews' and workers' web app, served by `aguante maintenance`."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = Field(
        None, description="Links in notifications; default http://host:port."
    )
    open_reading: bool = Field(
        False, description="Anyone on the plant network may read tickets; changes need a token."
    )
    secret_key: str | None = Field(None, description="Only from AGUANTE_SECRET_KEY.")
    enabled: bool = Field(True, description="Serve the web app with `aguante maintenance`.")
    tokens_file: str = Field(
        "aguante-tokens.yaml",
        description="Who may change things: token → name and crew (none: a worker). Made "
        "with `aguante maintenance CONFIG --new-token NAME [--crew ID]`.",
    )


class MaintenanceConfig(_Model):
    """Rules, tickets, crews and their notifications."""

    interval: float = Field(60.0, ge=5, le=3600, description="Seconds between rule evaluations.")
    store: str = Field(
        "sqlite:///aguante-tickets.db",
        description="sqlite:///path (default) or postgresql://user@host/db; AGUANTE_STORE_URL.",
    )
    crews: list[Crew] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)
    rules: list[Rule] = Field(default_factory=list)
    web: WebConfig = WebConfig()

    @model_validator(mode="after")
    def _consistent(self) -> MaintenanceConfig:
        _unique([c.id for c in self.crews], "crews")
        _unique([n.id for n in self.notifications], "notifications")
        _unique([r.id for r in self.rules], "rules")
        targets = {n.id for n in self.notifications}
        for index, crew in enumerate(self.crews):
            for n_index, target in enumerate(crew.notify):
                if target not in targets:
                    raise _FieldProblem(
                        f"crews[{index}].notify[{n_index}]",
                        f"{target!r} is not among the notifications "
                        f"({', '.join(sorted(targets)) or 'none'})",
                    )
        crews = {c.id for c in self.crews}
        for index, rule in enumerate(self.rules):
            if rule.crew is not None and rule.crew not in crews:
                raise _FieldProblem(f"rules[{index}].crew", f"{rule.crew!r} is not among the crews")
        return self


class Machine(_Model):
    """A machine on the floor, its sector and where its signals come from."""

    id: Name
    name: str | None = None
    sector: Name
    modbus: ModbusDevice | None = None
    mqtt: list[MqttSubscription] = Field(
        default_factory=list, description="The machine's add-on boards publishing over MQTT."
    )
    kind: str | None = Field(None, description="What it is (press, lathe…): rules by kind.")
    process: Name | None = Field(
        None,
        description="The process it serves (turning, pressing, printing…): what a network of "
        "plants compares; default: its sector.",
    )
    rated_per_hour: float | None = Field(
        None, gt=0, description="Parts per hour at rated speed: capacity and performance."
    )
    state: StateRules | None = Field(None, description="How running / idle / down is recognised.")
    counters: Counters = Counters()

    @model_validator(mode="after")
    def _own_topics(self) -> Machine:
        if self.state is None and (self.counters.produced or self.counters.rejected):
            raise _FieldProblem(
                "counters", "parts are counted per minute of state: give the machine a `state`"
            )
        for index, subscription in enumerate(self.mqtt):
            if subscription.machine not in (None, self.id):
                raise _FieldProblem(
                    f"mqtt[{index}].machine", f"{subscription.machine!r} inside machine {self.id!r}"
                )
            if "{machine}" in subscription.topic:
                raise _FieldProblem(
                    f"mqtt[{index}].topic",
                    "{machine} is for mqtt.subscriptions; here the machine is known",
                )
        return self


class Config(_Model):
    """The whole factory file."""

    factory: Name
    timezone: str = "America/Argentina/Buenos_Aires"
    influxdb: InfluxDBConfig = InfluxDBConfig()
    mqtt: MqttConfig = MqttConfig()
    stats_interval: float = Field(
        10.0, gt=0, le=3600, description="Seconds between points of the collector measurement."
    )
    language: Language = Field("es", description="Of command-line tables and reason names.")
    state_file: str = Field(
        "aguante-state.json",
        description="Where the collector keeps machine states and counters across restarts.",
    )
    buffer: BufferConfig = BufferConfig()
    calendar: Calendar = Calendar()
    stop_reasons: list[StopReason] = Field(
        default_factory=lambda: list(DEFAULT_STOP_REASONS),
        description="Replaces the default list (docs/capacity.md) when given.",
    )
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    network: NetworkSharing = Field(
        default_factory=NetworkSharing, description="Sharing rollups with a network of plants."
    )
    sectors: list[Sector] = Field(min_length=1)
    machines: list[Machine] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {zone!r}; use a name such as America/Sao_Paulo"
            ) from None
        return zone

    @model_validator(mode="after")
    def _references(self) -> Config:
        sector_ids = [s.id for s in self.sectors]
        _unique(sector_ids, "sectors")
        _unique([m.id for m in self.machines], "machines")
        for index, machine in enumerate(self.machines):
            if machine.sector not in sector_ids:
                raise _FieldProblem(
                    f"machines[{index}].sector",
                    f"{machine.sector!r} is not among the sectors ({', '.join(sector_ids)})",
                )
        _check_field_types(self.machines, self.mqtt.subscriptions)
        _check_subscriptions(self, [m.id for m in self.machines])
        _check_state_signals(self)
        _check_rules(self)
        _unique([r.id for r in self.stop_reasons], "stop_reasons")
        serial: dict[str, tuple[str, tuple[object, ...]]] = {}
        for index, machine in enumerate(self.machines):
            device = machine.modbus
            if device is None or device.transport != "rtu":
                continue
            settings = (device.baudrate, device.parity, device.stopbits, device.bytesize)
            first = serial.setdefault(device.connection_key, (machine.id, settings))
            if first[1] != settings:
                raise _FieldProblem(
                    f"machines[{index}].modbus",
                    f"shares {device.serial_port} with {first[0]!r} but not its "
                    "baudrate/parity/stopbits/bytesize; one bus has one setting",
                )
        return self

    def sector_of(self, machine: Machine) -> Sector:
        return next(s for s in self.sectors if s.id == machine.sector)

    def signals_of(self, machine: Machine) -> dict[str, Signal | MqttSignal]:
        """Every signal the machine can have, by name: its own and shared subscriptions'."""
        found: dict[str, Signal | MqttSignal] = {
            signal.name: signal for _, signal in _signals_of(machine, 0)
        }
        for board in self.mqtt.subscriptions:
            if board.machine == machine.id or (
                board.machine is None and "{machine}" in board.topic
            ):
                for mqtt_signal in board.signals:
                    found.setdefault(mqtt_signal.name, mqtt_signal)
        return found

    def rule_machines(self, rule: Rule) -> list[Machine]:
        """The machines a maintenance rule watches, in config order."""
        return [
            m
            for m in self.machines
            if (not rule.machines or m.id in rule.machines)
            and (rule.kind is None or m.kind == rule.kind)
            and (rule.sector is None or m.sector == rule.sector)
        ]

    def reason(self, reason_id: str) -> StopReason | None:
        return next((r for r in self.stop_reasons if r.id == reason_id), None)


_KIND_NAMES = {"int": "integer", "float": "float", "bool": "boolean", "str": "string"}


def _signals_of(machine: Machine, m_index: int) -> list[tuple[str, Signal | MqttSignal]]:
    """(config path, signal) of every signal a machine's own sources give."""
    found: list[tuple[str, Signal | MqttSignal]] = []
    if machine.modbus is not None:
        found += [
            (f"machines[{m_index}].modbus.signals[{i}]", s)
            for i, s in enumerate(machine.modbus.signals)
        ]
    for b_index, board in enumerate(machine.mqtt):
        found += [
            (f"machines[{m_index}].mqtt[{b_index}].signals[{i}]", s)
            for i, s in enumerate(board.signals)
        ]
    return found


def _check_field_types(machines: list[Machine], subscriptions: list[MqttSubscription]) -> None:
    # InfluxDB keeps one type per field name in a measurement, whichever series writes it: a
    # `pressure` stored as integer on one machine and as float on another loses the second.
    first: dict[str, tuple[str, str]] = {}

    def same_type(where: str, owner_name: str, signal: Signal | MqttSignal) -> None:
        kind = signal.field_kind
        owner, owner_kind = first.setdefault(signal.name, (owner_name, kind))
        if owner_kind != kind:
            raise _FieldProblem(
                where,
                f"{signal.name!r} would be stored as {_KIND_NAMES[kind]} here but as "
                f"{_KIND_NAMES[owner_kind]} on {owner!r}, and InfluxDB keeps one type per "
                "field name; rename one, or write `store_as: float` on the integer one",
            )

    for m_index, machine in enumerate(machines):
        own: set[str] = set()
        for where, signal in _signals_of(machine, m_index):
            if signal.name in own:
                raise _FieldProblem(
                    f"{where}.name",
                    f"{signal.name!r} is already a signal of {machine.id!r} from another source",
                )
            own.add(signal.name)
            same_type(where, machine.id, signal)
    for b_index, board in enumerate(subscriptions):
        for s_index, mqtt_signal in enumerate(board.signals):
            where = f"mqtt.subscriptions[{b_index}].signals[{s_index}]"
            same_type(where, board.machine or board.topic, mqtt_signal)


def _check_subscriptions(config: Config, machine_ids: list[str]) -> None:
    boards: list[tuple[str, MqttSubscription]] = [
        (f"machines[{m}].mqtt[{b}]", board)
        for m, machine in enumerate(config.machines)
        for b, board in enumerate(machine.mqtt)
    ]
    for index, board in enumerate(config.mqtt.subscriptions):
        where = f"mqtt.subscriptions[{index}]"
        if board.machine is None and "{machine}" not in board.topic:
            raise _FieldProblem(
                f"{where}.machine", "required unless the topic holds a {machine} placeholder"
            )
        if board.machine is not None and board.machine not in machine_ids:
            raise _FieldProblem(f"{where}.machine", f"{board.machine!r} is not a machine id")
        boards.append((where, board))
    seen: list[tuple[str, str]] = []
    for where, board in boards:
        for kind, template in topic_layout(board.format, board.topic).items():
            if kind in AVAILABILITY_KINDS:
                continue
            mqtt_filter = to_filter(template)
            for other_where, other_filter in seen:
                if filters_overlap(mqtt_filter, other_filter):
                    raise _FieldProblem(
                        f"{where}.topic",
                        f"{mqtt_filter} overlaps {other_filter} of {other_where}: one message "
                        "would be read by both",
                    )
            seen.append((where, mqtt_filter))


def _check_state_signals(config: Config) -> None:
    for index, machine in enumerate(config.machines):
        if machine.state is None:
            continue
        signals = config.signals_of(machine)
        uses: list[tuple[str, str, str]] = [
            (f"machines[{index}].state.{state}", c.signal, _condition_kind(c))
            for state, c in machine.state.conditions.items()
        ]
        for role in ("produced", "rejected"):
            counter = getattr(machine.counters, role)
            if counter is not None:
                uses.append((f"machines[{index}].counters.{role}", counter.signal, counter.kind))
        for where, name, use in uses:
            signal = signals.get(name)
            if signal is None:
                known = ", ".join(sorted(signals)) or "none"
                raise _FieldProblem(
                    f"{where}.signal",
                    f"{name!r} is not a signal of {machine.id!r} (its signals: {known})",
                )
            kind = signal.field_kind
            if use in ("above", "below", "counter") and kind not in ("int", "float"):
                raise _FieldProblem(
                    f"{where}.signal",
                    f"{name!r} is {_KIND_NAMES[kind]}; `{use}` needs a number",
                )
            if use == "pulse" and kind != "bool":
                raise _FieldProblem(
                    f"{where}.signal", f"{name!r} is {_KIND_NAMES[kind]}; a pulse needs a boolean"
                )


def _condition_kind(condition: Condition) -> str:
    if condition.above is not None:
        return "above"
    if condition.below is not None:
        return "below"
    return "equals" if condition.equals is not None else "advanced_within"


def _check_rules(config: Config) -> None:
    machines = {m.id: m for m in config.machines}
    sectors = {s.id for s in config.sectors}
    for index, rule in enumerate(config.maintenance.rules):
        where = f"maintenance.rules[{index}]"
        for m_index, machine_id in enumerate(rule.machines):
            if machine_id not in machines:
                raise _FieldProblem(
                    f"{where}.machines[{m_index}]", f"{machine_id!r} is not a machine id"
                )
        if rule.sector is not None and rule.sector not in sectors:
            raise _FieldProblem(f"{where}.sector", f"{rule.sector!r} is not among the sectors")
        chosen = config.rule_machines(rule)
        if not chosen:
            raise _FieldProblem(f"{where}.machines", "no machine matches this rule")
        signal = rule.signal
        if signal is None:
            continue
        for machine in chosen:
            known = config.signals_of(machine)
            if signal not in known:
                raise _FieldProblem(
                    f"{where}.{rule.test}.signal",
                    f"{signal!r} is not a signal of {machine.id!r}",
                )
            if rule.test in ("threshold", "rate", "drift") and known[signal].field_kind not in (
                "int",
                "float",
            ):
                raise _FieldProblem(
                    f"{where}.{rule.test}.signal", f"{signal!r} of {machine.id!r} is not a number"
                )
    for index, crew in enumerate(config.maintenance.crews):
        for s_index, sector in enumerate(crew.sectors):
            if sector not in sectors:
                raise _FieldProblem(
                    f"maintenance.crews[{index}].sectors[{s_index}]",
                    f"{sector!r} is not among the sectors",
                )


def _unique(ids: list[str], where: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(ids):
        if item in seen:
            raise _FieldProblem(f"{where}[{index}].id", f"{item!r} is used twice")
        seen.add(item)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in a config file: where, what, and how to fix it."""

    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class ConfigError(Exception):
    """The config file cannot be used; `problems` lists every error found."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and validate a factory file; raise ConfigError."""
    source, text = read_config_file(path)
    return parse_config(text, source=source, environ=os.environ if environ is None else environ)


def read_config_file(path: str | Path) -> tuple[str, str]:
    """(source, text) of a config file; ConfigError when it cannot be read."""
    source = str(path)
    try:
        return source, Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            source, [ConfigProblem("", f"cannot read the file: {exc.strerror}")]
        ) from None


def load_config_or_say(path: str | Path) -> Config | None:
    """For commands: the factory file, or None once its problems are printed to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _fresh(value: Any) -> Any:
    """A copy of loaded YAML made of new objects, its text interned. The parser's own garbage
    lies between the objects it returns, so Python's allocator could give little of that memory
    back while the data lived; and a plant's file repeats the same keys, tables, types and
    signal names thousands of times, which the models then keep once each. A file of 100
    devices × 60 signals (benchmarks: memory) adds 7.1 MiB to the process so, 8.9 without the
    copy. Dates and other scalars stay as they are."""
    kind = type(value)
    if kind is dict:
        return {_fresh(k): _fresh(v) for k, v in value.items()}
    if kind is list:
        return [_fresh(item) for item in value]
    if kind is str:
        return sys.intern(value.encode().decode())
    if kind is float:
        return value + 0.0
    if kind is int:
        return value + 0
    return value


def parse_config(text: str, *, source: str = "<config>", environ: Mapping[str, str]) -> Config:
    """Validate YAML text; environment variables in ENV_OVERRIDES win over the file."""
    return parse_yaml_model(
        text,
        Config,
        source=source,
        mapping="the file must be a mapping with factory, sectors, machines",
        secrets=_SECRETS,
        overrides=ENV_OVERRIDES,
        environ=environ,
    )


def parse_yaml_model(
    text: str,
    model: type[_M],
    *,
    source: str,
    mapping: str,
    secrets: Mapping[str, Mapping[str, str]],
    overrides: Mapping[str, tuple[str, str]],
    environ: Mapping[str, str],
) -> _M:
    """A config file's YAML as `model`, the environment's overrides applied and secrets refused
    from the file (`apply_environment`); every problem at once in one ConfigError. `mapping`
    says what the top level must be."""
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {problem}")]) from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # PyYAML's constructors raise these, without a position, for a value its type cannot
        # hold (`!!int x`, `!!bool maybe`, an integer of thousands of digits).
        problem = f"a value that cannot be read as its type ({type(exc).__name__}: {exc})"
        raise ConfigError(source, [ConfigProblem("", f"not valid YAML: {problem}")]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("", mapping)])
    data = _fresh(data)
    problems = apply_environment(data, secrets, overrides, environ)
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_problems(exc))
    if problems:
        raise ConfigError(source, problems)
    return config


def apply_environment(
    data: dict[str, Any],
    secrets: Mapping[str, Mapping[str, str]],
    overrides: Mapping[str, tuple[str, str]],
    environ: Mapping[str, str],
) -> list[ConfigProblem]:
    """Put the environment's settings into a loaded file (`overrides`: variable → (section,
    key), sections as dotted paths) and return a problem for each secret the file holds itself
    (`secrets`: section → key → the variable it must come from). For a factory file and for a
    network's file alike."""
    problems: list[ConfigProblem] = []
    for section, keys in secrets.items():
        block = _block(data, section, create=False)
        if not isinstance(block, dict):
            continue
        for key, env_name in keys.items():
            if block.get(key) is not None:
                problems.append(
                    ConfigProblem(
                        f"{section}.{key}",
                        "secrets are not read from the config file",
                        f"remove it and set {env_name} in the environment",
                    )
                )
    for env_name, (section, key) in overrides.items():
        value = environ.get(env_name)
        if value:
            block = _block(data, section, create=True)
            if isinstance(block, dict):
                block[key] = value
    return problems


def _block(data: dict[str, Any], section: str, *, create: bool) -> Any:
    """The mapping at a dotted section path (`maintenance.web`); an empty `influxdb:` line
    means the defaults, so None becomes {}."""
    block: Any = data
    for name in section.split("."):
        if not isinstance(block, dict):
            return None
        if block.get(name) is None and (create or name in block):
            block[name] = {}
        block = block.get(name)
    return block


def validation_problems(exc: ValidationError) -> list[ConfigProblem]:
    """A validation error of any of the config's models as problems with their paths."""
    return _problems(exc)


def _problems(exc: ValidationError) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        path = _path(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _FieldProblem):
            path = f"{path}.{cause.where}".lstrip(".").replace(".[", "[")
        kind = error["type"]
        message = error["msg"].removeprefix("Value error, ")
        hint = ""
        if kind == "extra_forbidden":
            message = "unknown key"
            hint = _did_you_mean(error["loc"])
        elif kind == "missing":
            message = "required key missing"
        elif kind == "literal_error":
            expected = error.get("ctx", {}).get("expected", "")
            message = f"{error['input']!r} is not allowed; expected {expected}"
        elif kind.startswith("byte_size"):
            message = f"{error['input']!r} is not a size"
            hint = "write it as 4GiB, 500MB or a number of bytes"
        problems.append(ConfigProblem(path, message, hint))
    return problems


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        nested = _model_in(annotation)
        if nested is None:
            break
        model = nested
    close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def config_warnings(config: Config) -> list[ConfigProblem]:
    """Things that are valid but usually a mistake, for `aguante check` to point out."""
    warnings = []
    for m_index, machine in enumerate(config.machines):
        if machine.modbus is None:
            continue
        for s_index, signal in enumerate(machine.modbus.signals):
            if signal.modicon is not None:
                continue
            first = {"holding": "4", "input": "3", "discrete": "1"}.get(signal.wire_table)
            number = str(signal.wire_address)
            if first and len(number) == 5 and number[0] == first and number != f"{first}0000":
                warnings.append(
                    ConfigProblem(
                        f"machines[{m_index}].modbus.signals[{s_index}].address",
                        f"{number} looks like a Modicon register number, but `address` is the "
                        "wire address, counted from 0",
                        f"if the manual calls it register {number}, write `register: {number}` "
                        f"(wire address {int(number[1:]) - 1}) instead",
                    )
                )
    return warnings


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the factory file, for editors (yaml-language-server and the like)."""
    schema = Config.model_json_schema()
    # With a profile, a machine may list no signals of its own (they come from the profile).
    device = schema["$defs"]["ModbusDevice"]
    device["required"] = [k for k in device.get("required", []) if k != "signals"]
    device["anyOf"] = [{"required": ["signals"]}, {"required": ["profile"]}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "aguante factory config"
    return schema
