"""Memory budgets: refuse, with the size in the message, what cannot fit where it is allocated.

The budget of an allocation is half the memory free on the device that receives it: host memory
for the CPU, the device's free memory (plus what torch's caching allocator holds unused) for a GPU.
"""
from __future__ import annotations

import os

import torch

from .errors import ArgumentTypeError, GraphTooLargeError, InputError


def available_bytes(device: torch.device | str | None = None) -> int:
    """Memory available for new allocations on ``device`` (default: the host).

    On a CUDA device, the free device memory (``torch.cuda.mem_get_info``) plus the bytes torch's
    caching allocator has reserved but not handed out, which it reuses before asking for more.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return host_available_bytes()


def host_available_bytes() -> int:
    """Physical memory available for new allocations on this machine (a large number if unknown).

    On Linux the kernel's ``MemAvailable`` estimate, which counts the page cache it can reclaim;
    the free pages alone (``SC_AVPHYS_PAGES``) shrink to little once files have been read.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 1 << 40


def default_budget(device: torch.device | str | None = None) -> int:
    """Half of the memory available on ``device`` (default: the host): the default ceiling for one
    graph or one edge listing."""
    return available_bytes(device) // 2


def format_bytes(n: float) -> str:
    """``1234567`` → ``'1.2 MB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # pragma: no cover


def check_budget(what: str, needed: int, budget: int | None, device: torch.device | str | None = None) -> None:
    """Raise :class:`GraphTooLargeError` if ``needed`` bytes exceed ``budget`` (default: half the
    memory free on ``device``, the device the allocation goes to; the host if ``None``).

    ``budget`` is a number of bytes ``>= 0`` or ``None``; anything else raises
    :class:`~graphlrp.errors.ArgumentTypeError` or :class:`~graphlrp.errors.InputError`.
    """
    if budget is not None and (not isinstance(budget, (int, float)) or isinstance(budget, bool)):
        raise ArgumentTypeError(f"max_bytes must be a number of bytes or None, got {budget!r}")
    if budget is not None and not budget >= 0:
        raise InputError(f"max_bytes must be >= 0, got {budget!r}")
    limit = default_budget(device) if budget is None else budget
    if needed > limit:
        where = "" if device is None or torch.device(device).type == "cpu" else f" on {device}"
        raise GraphTooLargeError(f"{what} would need {format_bytes(needed)}, above the budget of "
                                 f"{format_bytes(limit)}{where}")
