"""Measuring a device's dense/CSR crossover: the threshold :mod:`graphlrp.thresholds` uses there.

:func:`calibrate` times the products of explaining (``W x`` and ``Wᵀ s`` on node-major operands)
with a dense and a CSR block holding the same random matrix at a range of densities and batches,
takes at each batch the density that best separates where CSR is as fast as dense from where it
is slower (:func:`crossover`), and caches the mean over the batches for the device's name and the torch version. It takes a few seconds; afterwards every
lowering and :meth:`graphlrp.Graph.to` on a device of that name uses the measured threshold.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from .blocks import DenseBlock, SparseBlock
from .errors import InputError
from .layout import as_node_major
from .thresholds import device_name, save_calibration

#: densities timed by default, ascending
DENSITIES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured on one device.

    Attributes
    ----------
    device_name, torch_version : str
        What the measurement is cached for.
    sparse_density : float
        The threshold: the mean of ``crossovers``.
    crossovers : dict
        Per batch (as a string, for JSON), the crossover of its timings (:func:`crossover`).
    seconds : dict
        Per ``'<batch>/<density>'``, the seconds of a dense and of a CSR product pair (the
        fastest of the repeats).
    size : int
        The matrices timed were ``size × size``.
    """

    device_name: str
    torch_version: str
    sparse_density: float
    crossovers: dict[str, float]
    seconds: dict[str, dict[str, float]]
    size: int


def crossover(densities: Sequence[float], dense_seconds: Sequence[float], sparse_seconds: Sequence[float]) -> float:
    """The threshold that best separates the ``densities`` where CSR was as fast as dense (at or
    below it) from those where it was slower (above it): 0 or one of the densities, the one with
    the fewest timings on the wrong side (the highest among equals), so that one disturbed timing
    does not move it far."""
    csr_wins = [sparse <= dense for dense, sparse in zip(dense_seconds, sparse_seconds)]
    candidates = [0.0, *densities]

    def misplaced(threshold: float) -> int:
        return sum(wins != (density <= threshold) for density, wins in zip(densities, csr_wins))

    return min(reversed(candidates), key=misplaced)


def calibrate(device: torch.device | str = "cpu", size: int = 1024, batches: Sequence[int] = (1, 64),
              densities: Sequence[float] = DENSITIES, repeats: int = 7, dtype: torch.dtype = torch.float32,
              save: bool = True, seed: int = 0) -> Calibration:
    """Measure the dense/CSR crossover on ``device`` and (``save``) cache it for the device's name.

    Parameters
    ----------
    device : torch.device or str
        Where to measure.
    size : int
        Matrices are ``size × size``.
    batches : sequence of int
        Batch sizes to time; the threshold is the mean of their crossovers.
    densities : sequence of float
        Densities to time, ascending, in ``(0, 1]``.
    repeats : int
        Timed repetitions per case (the fastest counts), after one untimed call.
    dtype : torch.dtype
        Of the weights and operands.
    save : bool
        Whether to cache the result (:func:`graphlrp.thresholds.save_calibration`).
    seed : int
        Of the random matrices.

    Returns
    -------
    Calibration

    Raises
    ------
    InputError
        An empty ``batches``, densities out of ``(0, 1]`` or not ascending, ``size`` or
        ``repeats`` below 1.
    """
    _check(size, batches, densities, repeats)
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    seconds: dict[str, dict[str, float]] = {}
    crossovers: dict[str, float] = {}
    for batch in batches:
        dense_times, sparse_times = [], []
        x = as_node_major(torch.rand(batch, size, generator=generator, dtype=dtype).to(device))
        for density in densities:
            mask = torch.rand(size, size, generator=generator) < density
            weight = (torch.randn(size, size, generator=generator, dtype=dtype) * mask).to(device)
            dense, sparse = DenseBlock(0, 1, weight), SparseBlock.from_matrix(0, 1, weight)
            pair = _fastest_seconds({"dense": lambda: dense.rmatvec(dense.matvec(x)),
                                     "sparse": lambda: sparse.rmatvec(sparse.matvec(x))}, repeats, device)
            seconds[f"{batch}/{density}"] = pair
            dense_times.append(pair["dense"])
            sparse_times.append(pair["sparse"])
        crossovers[str(batch)] = crossover(densities, dense_times, sparse_times)
    result = Calibration(device_name(device), torch.__version__, statistics.fmean(crossovers.values()),
                         crossovers, seconds, size)
    if save:
        save_calibration(result.device_name, asdict(result))
    return result


def _fastest_seconds(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """The fastest of ``repeats`` calls of each function, called in alternation after one untimed
    call each (on a shared machine other work only adds time, so the fastest call is the steadiest)."""
    for fn in fns.values():
        fn()
    fastest = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    return fastest


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check(size: int, batches: Sequence[int], densities: Sequence[float], repeats: int) -> None:
    if size < 1 or repeats < 1 or not batches or any(b < 1 for b in batches):
        raise InputError(f"size, repeats and every batch must be >= 1 (and batches not empty), got size={size}, "
                         f"repeats={repeats}, batches={tuple(batches)}")
    if not densities or any(not 0 < d <= 1 for d in densities) or list(densities) != sorted(densities):
        raise InputError(f"densities must be ascending numbers in (0, 1], got {tuple(densities)}")
