"""Where a weight matrix is held sparse: the density threshold of each device.

A matrix lowered with ``block_kind='auto'`` is held in CSR (``'sparse'``) when its density
(nonzero weights / weights) is at or below the threshold of the device it is on, else as a dense
matrix; :meth:`graphlrp.Graph.to` decides such kinds again for the device a graph moves to.

The crossover differs between devices. On a 2-core CPU CSR beats dense below ~10% density at
batch 1 and ~35% at batch 64 (measured; threshold 0.2). On a GPU, dense products run at a large
share of peak while unstructured CSR products reach a few percent of it, so the crossover is lower
and falls with the batch (``docs/gpu.md``): 0.05 is a starting value, to be replaced by a
measurement on the device (:func:`graphlrp.calibration.calibrate`).

A device's threshold is, in this order: one set with :func:`override`; one measured by
:func:`graphlrp.calibration.calibrate` and cached for the device's name and the torch version
(under ``$GRAPHLRP_CACHE_DIR``, default ``~/.cache/graphlrp``); :data:`DEFAULT_THRESHOLDS` for
the device's type; the CPU's.
"""
from __future__ import annotations

import functools
import json
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import ArgumentTypeError, InputError

#: "CSR if density <=" per device type, before any calibration
DEFAULT_THRESHOLDS: dict[str, float] = {"cpu": 0.2, "cuda": 0.05}

_overrides: dict[str, float] = {}
#: calibrations read from the cache, by file (read once per process, updated when one is saved)
_loaded: dict[Path, dict[str, dict]] = {}


def cache_dir() -> Path:
    """The directory graphlrp caches measurements in: ``$GRAPHLRP_CACHE_DIR`` or ``~/.cache/graphlrp``."""
    configured = os.environ.get("GRAPHLRP_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "graphlrp"


def calibration_file() -> Path:
    """The file holding the calibrations made with this torch version, by device name."""
    return cache_dir() / "thresholds" / f"torch-{torch.__version__}.json"


def device_name(device: torch.device | str) -> str:
    """A name for the hardware behind ``device``: the GPU's model for CUDA, the processor's for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _processor_name()
    return device.type


@functools.cache
def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cached_calibrations() -> dict[str, dict]:
    """The calibrations cached for this torch version, by device name (empty if none)."""
    path = calibration_file()
    if path not in _loaded:
        try:
            _loaded[path] = json.loads(path.read_text())
        except (OSError, ValueError):
            _loaded[path] = {}
    return _loaded[path]


def save_calibration(name: str, record: dict) -> Path:
    """Cache ``record`` (holding ``'sparse_density'``) for the device called ``name``; returns the file."""
    calibrations = dict(cached_calibrations())
    calibrations[name] = record
    path = calibration_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(calibrations, indent=1, sort_keys=True))
    temporary.replace(path)
    _loaded[path] = calibrations
    return path


def sparse_density(device: torch.device | str) -> float:
    """The density at or below which a matrix on ``device`` is held sparse (see the module's order)."""
    device = torch.device(device)
    if device.type in _overrides:
        return _overrides[device.type]
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available()):
        measured = cached_calibrations().get(device_name(device))
        if measured is not None:
            return float(measured["sparse_density"])
    return DEFAULT_THRESHOLDS.get(device.type, DEFAULT_THRESHOLDS["cpu"])


def choose_kind(num_edges: int, n_src: int, n_dst: int, device: torch.device | str) -> str:
    """``'sparse'`` or ``'dense'`` for ``num_edges`` nonzero weights of an ``(n_dst, n_src)`` matrix on ``device``."""
    density = num_edges / max(1, n_src * n_dst)
    return "sparse" if density <= sparse_density(device) else "dense"


@contextmanager
def override(device_type: str, density: float) -> Iterator[None]:
    """Hold matrices on devices of ``device_type`` (``'cpu'``, ``'cuda'``, ...) sparse at or below
    ``density`` inside a ``with`` block, whatever was measured."""
    if not isinstance(device_type, str):
        raise ArgumentTypeError(f"device_type must be a device type such as 'cuda', got {device_type!r}")
    if isinstance(density, bool) or not isinstance(density, (int, float)) or not 0 <= density <= 1:
        raise InputError(f"density must be a number in [0, 1], got {density!r}")
    previous = _overrides.get(device_type)
    _overrides[device_type] = float(density)
    try:
        yield
    finally:
        if previous is None:
            del _overrides[device_type]
        else:
            _overrides[device_type] = previous


#: "unroll if kernel density <=" per device type: a convolution lowered with ``block_kind='auto'``
#: whose kernels hold at most this share of nonzero weights is held as CSR over its unrolled edges
#: (:class:`graphlrp.blocks.UnrolledConvBlock`). On a 2-core CPU the unrolled CSR products take
#: 0.05–0.2 of the convolutions' time at 1–3% density and 0.7–1.7 at 10% (``docs/performance.md``);
#: other devices keep convolutions until measured there.
UNROLL_CONVOLUTION_AT_MOST: dict[str, float] = {"cpu": 0.05}
#: the most bytes one unrolled convolution may hold; larger ones stay convolutions
UNROLL_CONVOLUTION_MAX_BYTES = 256 * 2**20


def unrolls_convolution(kernel_density: float, held_bytes: int, device: torch.device | str) -> bool:
    """Whether a convolution of ``kernel_density`` whose unrolled CSR would hold ``held_bytes``
    is held unrolled on ``device`` (see :data:`UNROLL_CONVOLUTION_AT_MOST`)."""
    limit = UNROLL_CONVOLUTION_AT_MOST.get(torch.device(device).type, 0.0)
    return kernel_density <= limit and held_bytes <= UNROLL_CONVOLUTION_MAX_BYTES
