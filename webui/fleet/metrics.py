"""The agent's /metrics: what the Watcher and the doctor know, in Prometheus' text format.

`families` is a pure function from what the agent holds (the snapshot, the doctor's findings,
the reachability verdicts, the read timings) to metric families of the official client
library; `exposition` renders them. Nothing here keeps state between scrapes but the timings,
which are plain immutable values the agent replaces as it observes reads.
"""
from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, Metric

from bridgescope.collector.doctor.finding import Finding
from bridgescope.collector.model import Snapshot
from bridgescope.collector.rules.reach import ForwardReach

PREFIX = "bridgescope"
# Every metric the agent exports (without the _bucket/_sum/_count/_info suffixes the format
# adds): deploy/prometheus/alerts.yaml may only name these, which a test checks.
NAMES = tuple(f"{PREFIX}_{n}" for n in (
    "namespaces", "forwards", "findings", "collector_seconds", "delta_seconds", "info"))
# A full read of a small host takes tens of milliseconds, of hundreds of namespaces seconds;
# a delta a few milliseconds.
COLLECTOR_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DELTA_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Timing:
    """Observed durations as a histogram: counts[i] read <= bounds[i], the last one above all."""
    bounds: tuple[float, ...]
    counts: tuple[int, ...] = ()
    total: float = 0.0

    def observe(self, seconds: float) -> Timing:
        counts = list(self.counts or (0,) * (len(self.bounds) + 1))
        counts[bisect.bisect_left(self.bounds, seconds)] += 1
        return Timing(self.bounds, tuple(counts), self.total + seconds)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, how many at most that long), ending with +Inf, as the format wants."""
        counts = self.counts or (0,) * (len(self.bounds) + 1)
        out, running = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), counts):
            running += n
            out.append((bound, running))
        return out


@dataclass(frozen=True)
class Timings:
    collector: Timing = Timing(COLLECTOR_BUCKETS)
    delta: Timing = Timing(DELTA_BUCKETS)


def reachable(fr: ForwardReach) -> str:
    """"true" when every source the forward is published for reaches it, "false" when one
    of them is refused or times out, else "unknown" (not checked yet, or a verdict the rules
    could not decide). A port bound to 127.0.0.1 refused from outside is as published."""
    meant = fr.meant()
    if meant and all(v.ok for v in meant):
        return "true"
    if any(v.outcome in ("refused", "timeout") for v in meant):
        return "false"
    return "unknown"


def families(snapshot: Snapshot, findings: Iterable[Finding], reach: Iterable[ForwardReach],
             timings: Timings, *, name: str, version: str) -> list[Metric]:
    ns = GaugeMetricFamily(f"{PREFIX}_namespaces", "Network namespaces the agent sees.")
    ns.add_metric([], len(snapshot.namespaces))
    fwd = GaugeMetricFamily(f"{PREFIX}_forwards",
                            "Published ports (DNAT forwards of the host), by owner and reachability.",
                            labels=["owner", "reachable"])
    for (owner, ok), n in sorted(Counter((fr.forward.owner, reachable(fr)) for fr in reach).items()):
        fwd.add_metric([owner, ok], n)
    found = GaugeMetricFamily(f"{PREFIX}_findings", "The doctor's findings, by id and severity.",
                              labels=["id", "severity"])
    for (fid, severity), n in sorted(Counter((f.id, f.severity) for f in findings).items()):
        found.add_metric([fid, severity], n)
    return [ns, fwd, found,
            _histogram("collector_seconds", "Seconds a full read of the host took.", timings.collector),
            _histogram("delta_seconds", "Seconds a change took from its event to the published delta.",
                       timings.delta),
            _info(name, version)]


def _histogram(suffix: str, text: str, timing: Timing) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_{suffix}", text)
    family.add_metric([], timing.cumulative(), sum_value=timing.total)
    return family


def _info(name: str, version: str) -> InfoMetricFamily:
    family = InfoMetricFamily(PREFIX, "The agent: its host name and bridgescope's version.")
    family.add_metric([], {"name": name, "version": version})
    return family


class _Fixed:
    """A collector that yields families computed beforehand (one scrape's worth)."""

    def __init__(self, metrics: Sequence[Metric]):
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return iter(self._metrics)


def exposition(metrics: Sequence[Metric]) -> bytes:
    """The text format, rendered by the client library itself."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(metrics))
    return generate_latest(registry)
