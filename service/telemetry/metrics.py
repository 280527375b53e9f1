"""Prometheus metrics of the service (docs/http-api.md#admin-and-metrics), prefix `challenge_`, and the multiprocess mode that
`serve --workers N` uses: every process writes its metrics to mmap files in one private directory and
the main process's `/metrics` sums them (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Gauge, values
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# "max": every process sets it to 1; the files of dead processes are removed (forget_process).
BUILD_INFO = Gauge(
    "challenge_build_info",
    "Build and catalog of this process (always 1)",
    ["version", "catalog_fingerprint", "ack_mode"],
    multiprocess_mode="max",
)

# Histogram buckets of docs/http-api.md#admin-and-metrics: 0.5 ms to 30 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Per-process standard metrics that are not sums over the processes.
_EARLIEST_OF = {"process_start_time_seconds"}
_MAIN_PROCESS_ONLY = {"process_max_fds"}


_pid = os.getpid()


def _process_id() -> int:
    """`os.getpid()` without a system call: prometheus_client asks for it on every update of every metric in
    multiprocess mode (a changed pid means a fork, which resets the values); kept right across a fork."""
    return _pid


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def enable_multiprocess(directory: Path) -> None:
    """Switch this process's metrics to multiprocess mode, writing to `directory` (which must exist and
    be empty), and export the directory to the worker processes started afterwards.

    prometheus_client chooses its value class when it is first imported, and the service's modules
    create their metrics when they are imported: the CLI has done both long before `serve` knows it
    runs workers. So the value class is replaced here, and every metric (and labelled child) created so
    far re-creates its values; they are all zero since nothing is counted before serving starts. This
    relies on prometheus_client internals (`_metric_init`, `_metrics`); tests/test_workers.py checks
    that the main process's metrics reach `/metrics`. Spawned workers inherit the environment variable,
    import prometheus_client in multiprocess mode directly and call this too (`in_worker`), for `_process_id`.
    """
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue(_process_id)
    for collector in list(REGISTRY._collector_to_names):
        if isinstance(collector, MetricWrapperBase):
            _recreate_values(collector)


def in_worker() -> None:
    """In a spawned worker of a multiprocess run (the environment variable set): `enable_multiprocess` again,
    so that its metrics take the process id without a system call per update."""
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        enable_multiprocess(Path(directory))


def _recreate_values(metric: MetricWrapperBase) -> None:
    if not metric._is_parent():
        metric._metric_init()
        return
    with metric._lock:
        children = list(metric._metrics.values())
    for child in children:
        child._metric_init()


def forget_process(directory: Path, pid: int) -> None:
    """A process of the instance ended: drop its gauges (live or not, they describe a process that is
    gone). Its counters and histograms stay, so that the sums never go backwards."""
    mark_process_dead(pid, str(directory))
    for path in directory.glob(f"gauge_*_{pid}.db"):
        path.unlink(missing_ok=True)


def multiprocess_registry(directory: Path, pids: Callable[[], list[int]]) -> CollectorRegistry:
    """What the admin port's `/metrics` serves with workers: the `challenge_*` metrics summed over every
    process's files, and `process_*` summed over the live processes `pids()` (main process first)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    registry.register(SummedProcessCollector(pids))
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def _returning(pid: int) -> Callable[[], int]:
    return lambda: pid


class SummedProcessCollector(Collector):
    """`process_*` of several processes: CPU, memory and file descriptors summed, the earliest start
    time, and the main process's fd limit."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids

    def collect(self) -> Iterable[Metric]:
        combined: dict[str, Metric] = {}
        for pid in self._pids():
            for family in ProcessCollector(pid=_returning(pid), registry=None).collect():
                known = combined.get(family.name)
                if known is None:
                    combined[family.name] = family
                elif family.name not in _MAIN_PROCESS_ONLY:
                    known.samples = [
                        _combine(family.name, mine, theirs)
                        for mine, theirs in zip(known.samples, family.samples, strict=False)
                    ]
        return list(combined.values())


def _combine(family: str, mine: Sample, theirs: Sample) -> Sample:
    if family in _EARLIEST_OF:
        return mine._replace(value=min(mine.value, theirs.value))
    return mine._replace(value=mine.value + theirs.value)
