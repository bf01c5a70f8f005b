"""Device profiles: register maps of equipment common in the plants (energy meters, temperature
controllers, drives, small PLCs), written from the makers' public manuals, each naming its source.

A machine's Modbus section says `profile: eastron-sdm630` and gets the profile's signals and
serial defaults; what it writes itself wins: a signal with a profile signal's name changes only
the keys it gives, a new name adds a signal, `profile_signals` keeps only some (docs/setup.md).
Profiles live as YAML files in `collector/profiles/` and are validated by the config's own models.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from collector.config import LANGUAGES, Language, ModbusDevice

__all__ = [
    "DIRECTORY",
    "PROFILE_DEVICE_KEYS",
    "Profile",
    "ProfileError",
    "ProfileSource",
    "apply_profile",
    "load_profile",
    "profile_ids",
]

DIRECTORY = Path(__file__).with_name("profiles")

# What a profile may set of a device: how the equipment talks, never where it is.
PROFILE_DEVICE_KEYS = frozenset(
    {
        "baudrate",
        "parity",
        "stopbits",
        "bytesize",
        "timeout",
        "retries",
        "max_registers_per_request",
        "max_bits_per_request",
        "gap_fill",
        "one_request_per_signal",
        "pause_between_requests",
        "pause_after_connect",
        "poll_interval",
    }
)
# An override's keys that replace other keys of the profile's signal besides themselves:
# `register` says table and address at once; `table` or `address` replace a `register`; `order`
# says both byte and word order, which replace it.
_REPLACES = {
    "register": ("table", "address"),
    "table": ("register",),
    "address": ("register",),
    "order": ("byte_order", "word_order"),
}
# order shorthand → (byte_order, word_order), as the config reads it
_ORDER_PARTS = {
    "ABCD": ("big", "big"),
    "CDAB": ("big", "little"),
    "BADC": ("little", "big"),
    "DCBA": ("little", "little"),
}

ProfileKind = Literal["energy-meter", "temperature-controller", "drive", "plc"]


class ProfileError(ValueError):
    """A profile that does not exist or does not validate."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileSource(_Model):
    """Where the register map comes from, so anyone can check it."""

    document: str = Field(min_length=1)
    url: str = Field(min_length=1)
    section: str = Field(min_length=1)
    checked_against: str | None = None


class Profile(_Model):
    """One kind of equipment's register map and serial defaults."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    name: str = Field(min_length=1)
    kind: ProfileKind
    maker: str = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    source: ProfileSource
    notes: dict[Language, str] = Field(
        description="For the person installing it, in every language: serial settings, quirks."
    )
    device: dict[str, Any] = Field(default_factory=dict)
    signals: list[dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _valid_as_config(self) -> Profile:
        missing = [lang for lang in LANGUAGES if not self.notes.get(lang, "").strip()]
        if missing:
            raise ValueError(f"notes: no text in {', '.join(missing)}")

        unknown = sorted(set(self.device) - PROFILE_DEVICE_KEYS)
        if unknown:
            raise ValueError(
                f"device: {', '.join(unknown)} cannot come from a profile "
                f"(only {', '.join(sorted(PROFILE_DEVICE_KEYS))})"
            )
        ModbusDevice.model_validate(
            {"host": "profile", "port": 502, **self.device, "signals": self.signals}
        )
        return self

    @property
    def signal_names(self) -> list[str]:
        return [str(s["name"]) for s in self.signals]


def profile_ids() -> list[str]:
    """The profiles shipped with aguante, sorted."""
    return sorted(p.stem for p in DIRECTORY.glob("*.yaml"))


@functools.cache
def load_profile(profile_id: str) -> Profile:
    """A shipped profile by id; ProfileError naming the known ones when there is none."""
    known = profile_ids()
    if profile_id not in known:
        close = [k for k in known if profile_id.split("-")[0] in k] or known
        raise ProfileError(f"no profile {profile_id!r}; known: {', '.join(close)}")
    path = DIRECTORY / f"{profile_id}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"profile {profile_id!r} ({path}) is not valid:\n{exc}") from None
    if profile.id != profile_id:
        raise ProfileError(f"{path}: id {profile.id!r} differs from the file name")
    return profile


def apply_profile(device: Mapping[str, Any]) -> dict[str, Any]:
    """A machine's `modbus:` mapping with its profile's defaults and signals merged in.

    The device's own signals come first, in their order (an error in one is reported at the
    index the file shows), each completed from the profile signal of the same name; then the
    profile's other signals (only `profile_signals` ones when that is given)."""
    merged = dict(device)
    profile = load_profile(str(device["profile"]))
    for key, value in profile.device.items():
        merged.setdefault(key, value)
    by_name = {str(s["name"]): s for s in profile.signals}
    chosen = device.get("profile_signals")
    if chosen is not None:
        if not isinstance(chosen, list) or not all(isinstance(n, str) for n in chosen):
            raise ProfileError("profile_signals: a list of the profile's signal names")
        missing = [n for n in chosen if n not in by_name]
        if missing:
            raise ProfileError(
                f"profile_signals: {', '.join(missing)} not in profile {profile.id!r} "
                f"(it has {', '.join(profile.signal_names)})"
            )
    own = device.get("signals") or []
    if not isinstance(own, list):
        return merged  # the model says what is wrong with it
    signals: list[Any] = []
    overridden: set[str] = set()
    for entry in own:
        base = by_name.get(str(entry.get("name"))) if isinstance(entry, dict) else None
        if base is None:
            signals.append(entry)
            continue
        overridden.add(str(entry["name"]))
        signals.append(_override(base, entry))
    wanted = set(chosen) if chosen is not None else set(by_name)
    signals.extend(
        dict(s) for s in profile.signals if s["name"] in wanted and s["name"] not in overridden
    )
    merged["signals"] = signals
    return merged


def _override(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A profile's signal with a machine's keys over it: each key replaces itself and what it
    also says (`register` the table and address, `order` the byte and word orders)."""
    combined = dict(base)
    if ("byte_order" in entry or "word_order" in entry) and "order" in combined:
        # Half of the profile's order changes: the other half stays what the profile says.
        byte_order, word_order = _ORDER_PARTS.get(str(combined.pop("order")).upper(), (None, None))
        combined.setdefault("byte_order", byte_order)
        combined.setdefault("word_order", word_order)
    for key in entry:
        for replaced in _REPLACES.get(key, ()):
            combined.pop(replaced, None)
    combined.update(entry)
    return {k: v for k, v in combined.items() if v is not None or k in entry}
