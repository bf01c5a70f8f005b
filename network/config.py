"""The network side's config: one YAML file naming the network, its broker, its InfluxDB, the
member plants and the processes they share (docs/network.md). Secrets only from the
environment: AGUANTE_NETWORK_PASSWORD (the network service's broker user), and
AGUANTE_INFLUXDB_PASSWORD / AGUANTE_INFLUXDB_TOKEN, as for a plant."""

from __future__ import annotations

import os
import zoneinfo
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.config import (
    InfluxDBConfig,
    Language,
    MqttTLS,
    Name,
    mqtt_url,
    parse_yaml_model,
    read_config_file,
    topic_prefix,
)

__all__ = ["NetworkBroker", "NetworkConfig", "NetworkPlant", "load_network", "parse_network"]

_ENV = {
    "AGUANTE_NETWORK_URL": ("broker", "url"),
    "AGUANTE_NETWORK_USERNAME": ("broker", "username"),
    "AGUANTE_NETWORK_PASSWORD": ("broker", "password"),
    "AGUANTE_INFLUXDB_URL": ("influxdb", "url"),
    "AGUANTE_INFLUXDB_DATABASE": ("influxdb", "database"),
    "AGUANTE_INFLUXDB_USERNAME": ("influxdb", "username"),
    "AGUANTE_INFLUXDB_PASSWORD": ("influxdb", "password"),
    "AGUANTE_INFLUXDB_TOKEN": ("influxdb", "token"),
}
_SECRETS = {
    "broker": {"password": "AGUANTE_NETWORK_PASSWORD"},
    "influxdb": {"password": "AGUANTE_INFLUXDB_PASSWORD", "token": "AGUANTE_INFLUXDB_TOKEN"},
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkBroker(_Model):
    """The network's broker, as the network service logs in to it."""

    url: str = Field(description="mqtts://host:8883; AGUANTE_NETWORK_URL.")
    client_id: str | None = Field(None, description="Stable: the broker keeps the session.")
    username: str | None = Field(None, description="Also AGUANTE_NETWORK_USERNAME.")
    password: str | None = Field(None, description="Only from AGUANTE_NETWORK_PASSWORD.")
    tls: MqttTLS | None = None

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        return mqtt_url(url)


class NetworkPlant(_Model):
    """A member plant: its id (its broker user, the plant's `network.plant`) and what it does."""

    id: Name
    processes: list[Name] = Field(default_factory=list, description="What it can take on.")
    region: str | None = None


class NetworkConfig(_Model):
    """The whole network file."""

    network: Name
    timezone: str = "America/Argentina/Buenos_Aires"
    language: Language = "es"
    broker: NetworkBroker
    influxdb: InfluxDBConfig = InfluxDBConfig()
    topic_prefix: str = Field("aguante/network", min_length=1)
    partitions: int = Field(1, ge=1, le=1024, description="Topics are split by plant hash.")
    take_partitions: list[int] | None = Field(
        None,
        description="The partitions this service stores (all by default): one service per "
        "share of the plants, each on its own subscription.",
    )
    short_above: float = Field(
        0.9, gt=0, le=1, description="A plant is short of capacity above this use of its time."
    )
    plants: list[NetworkPlant] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone") from None
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        return topic_prefix(prefix)

    @model_validator(mode="after")
    def _consistent(self) -> NetworkConfig:
        ids = [p.id for p in self.plants]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"plants: {', '.join(twice)} listed twice")
        for number in self.take_partitions or []:
            if not 0 <= number < self.partitions:
                raise ValueError(f"take_partitions: {number} is not in 0..{self.partitions - 1}")
        return self

    @property
    def processes(self) -> list[str]:
        """Every process a member plant declares, in first-seen order."""
        seen: dict[str, None] = {}
        for plant in self.plants:
            seen.update(dict.fromkeys(plant.processes))
        return list(seen)

    def plant(self, plant_id: str) -> NetworkPlant | None:
        return next((p for p in self.plants if p.id == plant_id), None)


def load_network(path: str | Path, environ: Mapping[str, str] | None = None) -> NetworkConfig:
    """Read and validate a network file; ConfigError with every problem and its path."""
    source, text = read_config_file(path)
    return parse_network(text, source=source, environ=os.environ if environ is None else environ)


def parse_network(
    text: str, *, source: str = "<network>", environ: Mapping[str, str]
) -> NetworkConfig:
    return parse_yaml_model(
        text,
        NetworkConfig,
        source=source,
        mapping="a mapping with network, broker, plants",
        secrets=_SECRETS,
        overrides=_ENV,
        environ=environ,
    )
