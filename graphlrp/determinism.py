"""A deterministic mode: the same input gives bit for bit the same relevance, run after run.

On a CPU graphlrp's results repeat already (its reductions are serial per destination). On CUDA
they need not: atomic scatter sums add in the order threads arrive, cuDNN may pick a
nondeterministic convolution algorithm (or a new one per shape with ``benchmark``), float32
matrix products and convolutions may run in TF32, and torch_scatter's ``scatter_max`` picks any
of several tied maxima. :func:`deterministic` turns each of these off while it is active:

* ``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic kernel raises
  torch's ``RuntimeError`` instead of running, unless ``warn_only``), with
  ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set where it is unset (cuBLAS reads it when it first makes its
  workspace, so set it in the environment before the first CUDA product for a whole process);
* ``torch.backends.cudnn.deterministic = True`` and ``torch.backends.cudnn.benchmark = False``;
* IEEE float32 (no TF32) for CUDA matrix products and cuDNN convolutions;
* native reductions instead of torch_scatter (:mod:`graphlrp.reductions` follows torch's
  deterministic flag): ``index_add_`` and one-dimensional ``scatter_add_``, which torch computes
  deterministically on CUDA in this mode.

Every setting is restored on exit, also when the block raises. The cost measured on a CPU and what
to expect on a GPU are in ``docs/performance.md``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .errors import ArgumentTypeError

#: cuBLAS's workspace setting that makes its products deterministic (NVIDIA's documentation)
CUBLAS_WORKSPACE = ":4096:8"


@dataclass(frozen=True)
class Settings:
    """torch's settings that :func:`deterministic` changes, as they are."""

    deterministic_algorithms: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    matmul_precision: str
    conv_precision: str
    cublas_workspace: str | None

    @classmethod
    def current(cls) -> "Settings":
        """The settings in force now."""
        return cls(
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )

    def apply(self) -> None:
        """Put these settings in force."""
        torch.use_deterministic_algorithms(self.deterministic_algorithms, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cuda.matmul.fp32_precision = self.matmul_precision
        torch.backends.cudnn.conv.fp32_precision = self.conv_precision
        if self.cublas_workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = self.cublas_workspace


@contextmanager
def deterministic(warn_only: bool = False) -> Iterator[None]:
    """Compute deterministically inside a ``with`` block (see the module); restore every setting after.

    Parameters
    ----------
    warn_only : bool
        Whether an operation without a deterministic kernel only warns (torch's ``warn_only``)
        instead of raising.

    Examples
    --------
    >>> with graphlrp.deterministic():
    ...     relevance = graphlrp.explain(graph, x, target=3).input_relevance
    """
    if not isinstance(warn_only, bool):
        raise ArgumentTypeError(f"warn_only must be True or False, got {warn_only!r}")
    previous = Settings.current()
    try:
        Settings(True, warn_only, True, False, "ieee", "ieee",
                 previous.cublas_workspace or CUBLAS_WORKSPACE).apply()
        yield
    finally:
        previous.apply()
