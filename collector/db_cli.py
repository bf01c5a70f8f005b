"""`aguante db init CONFIG`: the command line of `collector.dbinit`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from collector.config import LANGUAGES, Language, load_config_or_say
from collector.dbinit import (
    GRAFANA_PASSWORD,
    GRAFANA_USERNAME,
    WRITER_PASSWORD,
    WRITER_USERNAME,
    DbInitError,
    init_database,
)
from collector.i18n import translate

__all__ = ["register"]

_DESCRIPTION = f"""\
Prepare InfluxDB 1.x for aguante, once before the first `aguante collect` (and again whenever
you like: what exists is left as it is, and the command says "already there").

It connects to influxdb.url of the factory file as the admin user in AGUANTE_INFLUXDB_USERNAME /
AGUANTE_INFLUXDB_PASSWORD and creates:
  - the database (influxdb.database);
  - the retention policy of the hourly and daily sums (influxdb.rollup_retention_policy, kept
    forever in shards of a year), and influxdb.retention_policy if it names one not there yet
    (with DURATION INF);
  - when {WRITER_USERNAME} and {WRITER_PASSWORD} are set,
    that user, who may read and write the database (for the collector and maintenance);
  - when {GRAFANA_USERNAME} and {GRAFANA_PASSWORD} are set,
    that user, who may only read it (for Grafana's data source).
A user already there gets its password and rights set again.
No continuous queries: the collector writes the hourly and daily sums itself.

InfluxDB 2.x and 3.x make databases and users their own way: there the command says what to run
instead and exits 1. Exit status: 0 when all is there, 1 otherwise.
"""


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add `db init` to the `aguante` command line."""
    db = commands.add_parser(
        "db",
        help="prepare InfluxDB: database, retention policies, users",
        description="Prepare the InfluxDB aguante writes to and reads from.",
    )
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create the database, its retention policies and users (idempotent)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("config", type=Path, help="the factory YAML file")
    init.add_argument(
        "--lang", choices=LANGUAGES, help="language of the output (default: the config's)"
    )
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    config = load_config_or_say(args.config)
    if config is None:
        return 1
    lang: Language = args.lang or config.language
    try:
        steps = init_database(config, os.environ)
    except DbInitError as exc:
        for step in exc.steps:
            print(step.text(lang))
        print(exc.text(lang), file=sys.stderr)
        return 1
    for step in steps:
        print(step.text(lang))
    created = sum(1 for s in steps if s.status == "created")
    present = sum(1 for s in steps if s.status == "present")
    print(translate(lang, "db.done", url=config.influxdb.url, created=created, present=present))
    return 0
