"""Live traffic: workload.py's devices, each event stamped with the wall-clock time it
happens at (``sessionizer demo`` and ``sessionizer produce --live``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator

from .. import codec
from ..core.config import MINUTE_MS
from .workload import Population, Scheduler, Upload

__all__ = ["EVENTS_PER_DEVICE_HOUR", "LiveTraffic", "devices_for_rate"]

# Measured on the demo's devices: events per device per hour of workload time.
EVENTS_PER_DEVICE_HOUR = 20.0


class LiveTraffic:
    """workload.py's devices, each event stamped with the wall-clock time it happens at.

    Workload time runs ``speed`` times faster than the wall clock. The workload's
    scheduler uploads each device's buffered events when its SDK would (background,
    exit, batch full, upload timer or login), at the wall-clock time of that moment.
    """

    UPLOAD_MS = 2 * MINUTE_MS  # workload time; the SDKs' 10 min would hide events for long

    def __init__(
        self,
        devices: int,
        *,
        speed: float,
        seed: int | None = None,
        apps: int = 3,
        bad_rate: float = 0.005,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.speed = speed
        self.clock = clock
        self.bad_rate = bad_rate
        # Visits come back within the hour (a few minutes of demo time), not hours.
        self.population = p = Population(
            devices,
            apps,
            seed if seed is not None else time.time_ns(),
            0,
            away_ms=(35 * MINUTE_MS, 75 * MINUTE_MS),
        )
        self._wall0 = int(clock() * 1000)
        for d in p.devices:
            # Start each device somewhere in a visit cycle (~1 h) and skip what came before
            # time 0: some devices are mid-visit, so traffic is steady from the first second.
            d.gen = p.script(d, -int(p.rng.uniform(0, 60 * MINUTE_MS)))
            d.upload_ms = min(d.upload_ms, self.UPLOAD_MS)
            d.next = next(d.gen)
            while d.next[0] < 0:
                d.next = next(d.gen)
        self.scheduler = Scheduler(p, stamp=self.wall_ms)

    @property
    def devices(self) -> int:
        return len(self.population.devices)

    def wall_ms(self, t: int) -> int:
        return self._wall0 + int(t / self.speed)

    async def records(self) -> AsyncIterator[bytes]:
        """Record values, each when its time comes; never ends."""
        while True:
            t = self.scheduler.peek()
            assert t is not None  # the devices' scripts never end
            delay = self.wall_ms(t) / 1000 - self.clock()
            if delay > 0:
                await asyncio.sleep(delay)
            for up in self.scheduler.advance():
                for rec in self.upload(up):
                    yield rec

    def upload(self, up: Upload) -> Iterator[bytes]:
        """The record of an upload, after a cut-off copy of it now and then."""
        p = self.population
        rec = p.record(up.device, self.wall_ms(up.t))
        cut = p.corrupt(rec) if p.rng.random() < self.bad_rate else None
        if cut is not None:
            yield cut  # cut off mid-way; the SDK retries it whole
        yield codec.dumps(rec)


def devices_for_rate(events_per_s: float, speed: float) -> int:
    per_device = EVENTS_PER_DEVICE_HOUR / 3600 * speed
    return max(1, round(events_per_s / per_device))
