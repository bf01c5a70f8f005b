"""Every tracked machine's state, stops and rollups, and the checkpoint that carries them across
restarts (docs/capacity.md).

The collector hands it each reading and ticks it once a second with what the sources say they
cannot see; it hands back the points to write. The checkpoint is a small JSON file replaced
atomically every few seconds and on stop, so a restart neither counts a minute twice nor leaves
a hole: the time the collector was really down is written as `unknown`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from collector.config import Config
from collector.machine_state import MachineTracker
from collector.schema import STATE_CODES, FieldValue, Point
from collector.shifts import ShiftCalendar
from collector.sources import HealthRecord, Reading, Unavailable

__all__ = ["MAX_GAP_MS", "CapacityTracker"]

log = logging.getLogger(__name__)

MAX_GAP_MS = 7 * 86_400_000  # a longer outage is rolled up for its last week only


class CapacityTracker:
    """States and rollups of every machine with a `state` block; clock passed in (UTC ms)."""

    def __init__(self, config: Config, *, now_ms: int, state_path: Path | None = None) -> None:
        self.config = config
        self.calendar = ShiftCalendar(config.calendar, config.timezone)
        self.path = state_path if state_path is not None else Path(config.state_file)
        self.trackers = {
            m.id: MachineTracker.create(config, m, self.calendar, now_ms)
            for m in config.machines
            if m.state is not None
        }
        self._pending = self._resume(now_ms)

    def observe(self, reading: Reading) -> list[Point]:
        tracker = self.trackers.get(reading.machine)
        if tracker is None:
            return []
        return tracker.observe(reading.time_ms, reading.values)

    def tick(self, now_ms: int, unavailable: Iterable[Unavailable] = ()) -> list[Point]:
        gone: dict[str, dict[str, int]] = {}
        for item in unavailable:
            signals = gone.setdefault(item.machine, {})
            for signal in item.signals:
                signals[signal] = min(signals.get(signal, item.since_ms), item.since_ms)
        points, self._pending = self._pending, []
        for machine, tracker in self.trackers.items():
            tracker.set_unavailable(gone.get(machine, {}))
            points += tracker.tick(now_ms)
        return points

    def close(self, now_ms: int) -> list[Point]:
        """What is known up to now, before the collector stops; then save the checkpoint."""
        points, self._pending = self._pending, []
        for tracker in self.trackers.values():
            points += tracker.close(now_ms)
        self.save()
        return points

    def health_records(self) -> list[HealthRecord]:
        records = []
        for machine, tracker in self.trackers.items():
            fields: dict[str, FieldValue] = {"state_code": STATE_CODES[tracker.state]}
            for role, tally in tracker.tallies.items():
                fields[f"{role}_counter_resets"] = tally.resets
                fields[f"{role}_counter_glitches"] = tally.glitches
            records.append(HealthRecord(machine, fields))
        return records

    # -- checkpoint ----------------------------------------------------------------------------

    def save(self) -> None:
        """Replace the checkpoint file atomically; a failure is logged, never raised."""
        data = {m: t.checkpoint() for m, t in self.trackers.items()}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({"factory": self.config.factory, "machines": data}, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            log.error("cannot save the machine-state checkpoint %s: %s", self.path, exc)

    def _resume(self, now_ms: int) -> list[Point]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.error("cannot read %s (%s): machine states start from unknown", self.path, exc)
            return []
        try:
            saved: dict[str, Any] = json.loads(text)["machines"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s is damaged (%s): machine states start from unknown", self.path, exc)
            return []
        points: list[Point] = []
        for machine, tracker in self.trackers.items():
            if machine not in saved:
                continue
            try:
                points += tracker.resume(saved[machine], now_ms, max_gap_ms=MAX_GAP_MS)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                log.error("%s: checkpoint unusable (%s); starting from unknown", machine, exc)
                fresh = MachineTracker.create(self.config, tracker.machine, self.calendar, now_ms)
                self.trackers[machine] = fresh
        log.info("machine states resumed from %s", self.path)
        return points
