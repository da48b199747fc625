"""Prometheus metrics: each app's registry, the request metrics every service has, and the
small API a service declares its own counters and gauges with (``service`` label filled in).

Names and labels follow Prometheus conventions (``_total`` counters, ``_seconds`` units,
labels with few values); the dashboard and the alerts in manifests/ are written against
them, and README "Metrics" lists them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from shopkit.domain import DomainError

# When this variable names a directory as prometheus_client is imported, every value is kept
# in a file there (one per process), so the workers of one service (WORKERS > 1: shopkit.workers
# sets it for them) can answer a scrape with the sum over all of them.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# How the workers' values of a gauge make one value (prometheus_client's multiprocess modes;
# "live": only the workers that are alive, see shopkit.workers). Unused in a single process.
GaugeMode = Literal["livesum", "livemax", "livemin", "liveall", "livemostrecent"]

# A live worker's gauge file: prometheus_client names it gauge_live<mode>_<pid>.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")

M = TypeVar("M", Counter, Gauge)
RefusalKinds = type[DomainError] | tuple[type[DomainError], ...]


class Family(Generic[M]):
    """One metric of a service: ``labels(*values)`` is its child for those label values,
    the ``service`` label filled in. Children are kept: ``.labels()`` is costly per call."""

    __slots__ = ("_children", "_metric", "_service")

    def __init__(self, metric: M, service: str) -> None:
        self._metric = metric
        self._service = service
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(self._service, *values)
        return child


class Level:
    """A count this process moves up and down (requests in flight, connections in use), and
    the gauge that shows it. The count is a plain int, which the gauge reads when scraped;
    with workers every change is also written to this worker's file, since the scrape may
    be answered by another worker. Without a gauge it only counts."""

    __slots__ = ("_written", "value")

    def __init__(self, gauge: Gauge | None = None, *, multiprocess: bool = False) -> None:
        self.value = 0
        self._written = gauge if multiprocess else None
        if gauge is not None and not multiprocess:
            gauge.set_function(lambda: self.value)

    def up(self) -> None:
        self.value += 1
        if self._written is not None:
            self._written.inc()

    def down(self) -> None:
        self.value -= 1
        if self._written is not None:
            self._written.dec()


class Metrics:
    """One registry per app (no process-wide globals, so tests can build many apps)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self.service = service
        labels = ["service", "method", "route", "status"]
        self.requests = Counter(
            "http_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        # (method, route, status) -> its counter and histogram: .labels() is costly per call.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.in_flight = self.level(
            "http_requests_in_flight", "HTTP requests being answered right now"
        )
        self._refusals: list[tuple[RefusalKinds, Family[Counter]]] = []
        self._before_scrape: list[Callable[[], None]] = []
        if multiprocess_dir is None:
            # This process's CPU, memory, file descriptors and start time; the Python
            # version; the garbage collector's work. (With workers: see render.)
            self.registry.register(
                WithService(service, ProcessCollector(registry=None), _gc_collector())
            )
            self.registry.register(WithService(service, PlatformCollector(registry=None)))

    # -- what a service declares ---------------------------------------------------------

    def counter(
        self, name: str, documentation: str, *labels: str, known: Iterable[str] = ()
    ) -> Family[Counter]:
        """A counter ``<name>_total`` with the labels ``service`` and ``labels``. With no
        labels of its own, or for each ``known`` value of its one label, it is shown (as 0)
        before anything is counted, so that a rate over it exists from the start."""
        family = Family(
            Counter(name, documentation, ["service", *labels], registry=self.registry),
            self.service,
        )
        self._show_from_start(family, labels, known)
        return family

    def gauge(
        self, name: str, documentation: str, *labels: str, mode: GaugeMode = "livesum"
    ) -> Family[Gauge]:
        """A gauge with the labels ``service`` and ``labels``; ``mode`` says how the values
        of several workers make one (the sum of the live ones unless said otherwise)."""
        family = Family(
            Gauge(
                name,
                documentation,
                ["service", *labels],
                registry=self.registry,
                multiprocess_mode=mode,
            ),
            self.service,
        )
        self._show_from_start(family, labels, ())
        return family

    def level(self, name: str, documentation: str) -> Level:
        """A gauge of a count this process moves up and down (see Level), summed over the
        live workers."""
        gauge = self.gauge(name, documentation).labels()
        return Level(gauge, multiprocess=self.multiprocess_dir is not None)

    def count_refusals(self, kinds: RefusalKinds, counter: Family[Counter]) -> None:
        """Count every refusal of these ``kinds`` a client is answered, in ``counter`` by the
        code of the answer (its one label)."""
        self._refusals.append((kinds, counter))

    def before_scrape(self, refresh: Callable[[], None]) -> None:
        """Call ``refresh`` (quick, no I/O) before each scrape is answered: for a gauge of
        something that changes with time alone (an age)."""
        self._before_scrape.append(refresh)

    @staticmethod
    def _show_from_start(family: Family[M], labels: tuple[str, ...], known: Iterable[str]) -> None:
        if not labels:
            family.labels()
        for value in known:
            family.labels(value)

    # -- what shopkit's middleware reports ---------------------------------------------

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (self.service, method, route, str(status))
            children = self._children[key] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def refused(self, refusal: DomainError, code: str) -> None:
        """A data layer's refusal was answered with ``code``."""
        for kinds, counter in self._refusals:
            if isinstance(refusal, kinds):
                counter.labels(code).inc()

    def render(self) -> bytes:
        for refresh in self._before_scrape:
            refresh()
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # A scrape lands on one worker: answer with every worker's values (dead ones' too, so
        # counters never go back), read from their files, as prometheus_client documents.
        # Process metrics are each live worker's, read from /proc and labelled with its pid
        # (one worker's alone would jump between workers from scrape to scrape, and its CPU
        # counter go back); the garbage collector's figures can only be read in-process, so
        # with workers there are none.
        every_worker = CollectorRegistry()
        every_worker.register(WorkerFiles(self.multiprocess_dir))
        every_worker.register(WorkerProcesses(self.service, self.multiprocess_dir))
        every_worker.register(WithService(self.service, PlatformCollector(registry=None)))
        return generate_latest(every_worker)


def _gc_collector() -> GCCollector:
    # GCCollector registers itself with the registry it is given, always: a scratch one, so
    # that it is only ever collected through WithService.
    return GCCollector(registry=CollectorRegistry())


class WithService(Collector):
    """prometheus_client's own collectors (process, platform, GC), with the ``service``
    label every series of ours has (and ``more`` labels)."""

    def __init__(
        self, service: str, *collectors: Collector, more: dict[str, str] | None = None
    ) -> None:
        self.labels = {"service": service, **(more or {})}
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            for family in collector.collect():
                labelled = Metric(family.name, family.documentation, family.type, family.unit)
                labelled.samples = [
                    sample._replace(labels={**sample.labels, **self.labels})
                    for sample in family.samples
                ]
                yield labelled


class WorkerFiles(MultiProcessCollector):
    """The values every worker keeps in its files, but for a file a worker is making right
    now: it exists empty for a moment, and prometheus_client (0.26) fails the whole scrape
    on an empty file (client_python#1199), for good if the worker was killed in that moment."""

    def __init__(self, directory: str) -> None:
        super().__init__(None, directory)
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        return self.merge([str(path) for path in self._written()], accumulate=True)

    def _written(self) -> Iterator[Path]:
        for path in self.directory.glob("*.db"):
            try:
                if path.stat().st_size:
                    yield path
            except FileNotFoundError:  # a dead worker's gauges, removed meanwhile
                continue


class WorkerProcesses(Collector):
    """The process metrics of every live worker of a service, labelled ``service`` and
    ``pid``. A live worker is one with a live gauge file in the metrics directory (each has
    http_requests_in_flight); the supervisor removes a dead worker's (shopkit.workers)."""

    def __init__(self, service: str, directory: str) -> None:
        self.service = service
        self.directory = Path(directory)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in sorted(self._live_pids()):
            process = ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in WithService(self.service, process, more={"pid": str(pid)}).collect():
                merged = families.setdefault(family.name, family)
                if merged is not family:
                    merged.samples.extend(family.samples)
        yield from families.values()

    def _live_pids(self) -> set[int]:
        found = (_LIVE_GAUGE_FILE.fullmatch(path.name) for path in self.directory.iterdir())
        return {int(match[1]) for match in found if match}
