"""`aguante profiles [ID]`: the device profiles shipped with aguante, and one profile whole:
where its map comes from, its serial settings, its signals and the lines to put in a config."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from collector.config import LANGUAGES, Language, Signal
from collector.i18n import language_from_environment, translate
from collector.profiles import ProfileError, load_profile, profile_ids

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `profiles` subcommand to the `aguante` parser."""
    profiles = commands.add_parser(
        "profiles",
        help="list the device profiles (energy meters, controllers, drives, PLCs) or show one",
        description="Register maps of equipment common in the plants, each from its maker's "
        "manual. In a config, a machine's modbus section says `profile: ID` and gets the "
        "profile's signals and serial settings; what it writes itself wins.",
    )
    profiles.add_argument("profile", nargs="?", metavar="ID", help="show this profile whole")
    profiles.add_argument("--lang", choices=LANGUAGES, help="language (default: the terminal's)")
    profiles.set_defaults(func=_profiles)


def _profiles(args: argparse.Namespace) -> int:
    lang: Language = args.lang or language_from_environment()
    if args.profile is None:
        rows = []
        for profile_id in profile_ids():
            profile = load_profile(profile_id)
            kind = translate(lang, f"profiles.kind_{profile.kind.replace('-', '_')}")
            rows.append((profile_id, kind, profile.name))
        width_id = max(len(r[0]) for r in rows)
        width_kind = max(len(r[1]) for r in rows)
        for profile_id, kind, name in rows:
            print(f"{profile_id.ljust(width_id)}  {kind.ljust(width_kind)}  {name}")
        print()
        print(translate(lang, "profiles.how"))
        return 0
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return 1
    kind = translate(lang, f"profiles.kind_{profile.kind.replace('-', '_')}")
    print(f"{profile.name} ({kind}, {profile.maker}: {', '.join(profile.models)})")
    print(translate(lang, "profiles.source", document=profile.source.document))
    print(f"  {profile.source.url}")
    print(f"  {profile.source.section}")
    if profile.source.checked_against:
        print(translate(lang, "profiles.checked", against=profile.source.checked_against))
    if profile.device:
        settings = ", ".join(f"{k}: {v}" for k, v in profile.device.items())
        print(translate(lang, "profiles.device", settings=settings))
    print()
    print(profile.notes[lang].strip())
    print()
    print(translate(lang, "profiles.signals"))
    for entry in profile.signals:
        signal = Signal.model_validate(entry)
        where = f"{signal.wire_table} {signal.wire_address}"
        if signal.bit is not None:
            where += f".{signal.bit}"  # as `aguante probe watch` writes a bit
        how = signal.type + (f" {entry['order']}" if "order" in entry else "")
        scale = f" ×{signal.scale:g}" if signal.scale != 1.0 else ""
        unit = f" {signal.unit}" if signal.unit else ""
        print(f"  {signal.name:<24} {where:<14} {how}{scale}{unit}")
    print()
    print(translate(lang, "profiles.snippet"))
    snippet = {
        "modbus": {
            "transport": "rtu",
            "serial_port": "/dev/ttyUSB0",
            "unit": 1,
            "profile": profile.id,
            "profile_signals": profile.signal_names[:3],
        }
    }
    print(yaml.safe_dump(snippet, sort_keys=False, allow_unicode=True).rstrip())
    return 0
