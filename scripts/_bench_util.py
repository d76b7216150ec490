"""Shared helpers of ``scripts/bench``: timing, peak-memory probes, machine description, tables."""
from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

MB = 1e6


# -- timing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    """How often to call each timed function: ``warmup`` untimed calls, then ``repeats`` timed ones."""

    warmup: int
    repeats: int


def time_interleaved(fns: Mapping[str, Callable[[], object]], timing: Timing, run: int = 1) -> dict[str, float]:
    """Median seconds per call of every function, timed in alternation after a warm-up.

    Each repeat calls every function ``run`` times in a row; the order rotates from one repeat to
    the next, so that no function always runs right after the same other one (caches, clock boost,
    allocator). With ``run=1`` every call follows another function's, whose data has pushed the
    caller's out of the caches; with longer runs most calls follow their own, as when one library
    explains a data set batch after batch.
    """
    names = list(fns)
    for _ in range(timing.warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(timing.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(run):
                start = time.perf_counter()
                fns[name]()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def time_once(fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds one call of ``fn`` takes, and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# -- peak memory ------------------------------------------------------------------------------
def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakProbe:
    """Resident memory and its high-water mark of this process (Linux ``/proc``).

    :meth:`reset` clears the high-water mark (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0) so
    that a peak can be read for one region of code; where that is not allowed the probe falls back
    to ``getrusage(RUSAGE_SELF).ru_maxrss``, which cannot be reset (``resettable`` is then False and
    a peak includes everything the process did before).
    """

    def __init__(self) -> None:
        self.resettable = self.reset()

    @staticmethod
    def rss() -> int:
        """Resident bytes now."""
        return _status_bytes("VmRSS")

    def peak(self) -> int:
        """Highest resident bytes since the last reset (since the start if not resettable)."""
        if self.resettable:
            return _status_bytes("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    @staticmethod
    def reset() -> bool:
        """Clear the high-water mark; False if the kernel does not allow it."""
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            return True
        except OSError:
            return False


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so that RSS shows live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


#: environment for measuring children: large allocations always mmap'ed, so freeing returns them
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


# -- machine ----------------------------------------------------------------------------------
def _machine_busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or NaN."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class ForeignLoad:
    """How many cores other processes kept busy while the benchmark ran (they distort timings)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.machine = _machine_busy_seconds()
        self.own = _own_cpu_seconds()

    def cores(self) -> float:
        """Average number of cores busy with other processes since construction."""
        elapsed = time.perf_counter() - self.start
        foreign = (_machine_busy_seconds() - self.machine) - (_own_cpu_seconds() - self.own)
        return max(0.0, foreign / elapsed)



def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> list[tuple[str, str]]:
    """What the numbers were measured on, as (item, value) pairs."""
    import graphlrp
    import zennit

    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        ("CPU", cpu_model()),
        ("logical cores", str(os.cpu_count())),
        ("torch threads", f"{torch.get_num_threads()} (intra-op), {torch.get_num_interop_threads()} (inter-op)"),
        ("load average at start", f"{load} (1, 5, 15 min)"),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("zennit", getattr(zennit, "__version__", _distribution_version("zennit"))),
        ("graphlrp", graphlrp.__version__),
        ("graphlrp reduction backends", ", ".join(graphlrp.reductions.available_backends())),
        ("graphlrp compiled kernels", f"numba {_distribution_version('numba')}" if graphlrp.kernels.available()
         else "none (numba not installed)"),
        ("dtype", "float32, CPU"),
        ("peak memory probe", "VmHWM, reset per measurement (/proc/self/clear_refs)" if PeakProbe().resettable
         else "ru_maxrss, cannot be reset here: peaks include set-up"),
    ]


def _distribution_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


# -- tables -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A goal from the issue: the measured value must be at most (``at_most``) or at least ``limit``."""

    limit: float
    at_most: bool = True
    unit: str = ""

    def met(self, value: float) -> bool:
        """Whether ``value`` reaches the goal."""
        return value <= self.limit if self.at_most else value >= self.limit

    def __str__(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {self.limit:g}{self.unit}"


def verdict(target: Target | None, value: float | None) -> str:
    """``yes``/``**NO**`` for a target, ``—`` when there is none or nothing was measured."""
    if target is None or value is None:
        return "—"
    return "yes" if target.met(value) else "**NO**"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table with columns padded to a common width."""
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def ms(seconds: float | None) -> str:
    """Milliseconds with three significant digits, or ``—``."""
    if seconds is None:
        return "—"
    value = seconds * 1e3
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def ratio(value: float | None) -> str:
    """A ratio with three significant digits, or ``—``."""
    return "—" if value is None else f"{value:.3g}"
