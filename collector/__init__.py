"""Collect readings from old machines (Modbus PLCs, MQTT boards) and store them in InfluxDB."""

import sys

# httpx imports its own command-line tool at import (`httpx._main`, which loads click, rich and
# pygments: 6 MiB of a collector's 60 on a small box) whenever those happen to be installed, as
# the test tools install them. aguante never runs that tool: httpx then falls back to a stub.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
