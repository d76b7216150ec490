"""The processes of a ``torch.distributed`` job that share one aggregation, and what they exchange.

An aggregation runs on :data:`ONE` process, or on the processes of the default process group
(as ``torchrun`` starts them: gloo on the CPU, NCCL on GPUs, c10d rendezvous across machines).
They exchange float64 vectors of sums only by gathering (every process receives every vector)
and broadcasting: no collective adds floats, so the order of every addition stays in the
aggregation's hands.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..errors import ArgumentTypeError, InputError

#: the environment variables ``torch.distributed``'s ``env://`` rendezvous reads (torchrun sets them)
ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Processes:
    """Process ``rank`` of ``size``; with ``size > 1`` they exchange tensors over the default process group."""

    rank: int
    size: int

    def gather(self, vector: Tensor, into: Callable[[], Tensor]) -> Callable[[], list[Tensor]]:
        """Start sending ``vector`` to every process; the returned function waits and gives every
        process's vector, in rank order (the work in between overlaps the exchange). They are
        received into buffers shaped like ``vector`` that ``into()`` gives (on one process:
        ``vector`` itself)."""
        if self.size == 1:
            return lambda: [vector]
        import torch.distributed as dist

        received = [into() for _ in range(self.size)]
        work = dist.all_gather(received, vector.contiguous(), async_op=True)

        def wait() -> list[Tensor]:
            work.wait()
            return received

        return wait

    def broadcast(self, vector: Tensor) -> Tensor:
        """Rank 0's ``vector`` on every process (written into ``vector`` elsewhere)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.broadcast(vector, src=0)
        return vector

    def broadcast_object(self, value: object) -> object:
        """Rank 0's ``value`` (anything picklable) on every process."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


#: an aggregation that runs on this process alone
ONE = Processes(0, 1)


def processes(distributed: bool | None, device: torch.device) -> Processes:
    """The processes an aggregation on ``device`` runs on.

    ``distributed=None``: the default process group's, if one is initialised, else :data:`ONE`;
    ``False``: :data:`ONE`; ``True``: the default process group's, initialised from the
    environment (``env://``, as ``torchrun`` sets it) with NCCL for a CUDA ``device`` and gloo
    otherwise, if it is not initialised yet.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise ArgumentTypeError(f"distributed must be True, False or None, got {distributed!r}")
    if distributed is False or not torch.distributed.is_available():
        if distributed:
            raise InputError("distributed=True needs torch.distributed, which this build of torch lacks")
        return ONE
    import torch.distributed as dist

    if not dist.is_initialized():
        if not distributed:
            return ONE
        missing = [name for name in ENVIRONMENT if name not in os.environ]
        if missing:
            raise InputError(f"distributed=True needs a process group: run under torchrun, initialise one with "
                             f"torch.distributed.init_process_group, or set {', '.join(missing)}")
        _join(device)
    return Processes(dist.get_rank(), dist.get_world_size())


def _join(device: torch.device) -> None:
    """Initialise the default process group from the environment, in a store of its own per attempt.

    ``torchrun --max-restarts`` restarts every process of a job with the same store; the keys of
    the attempt that failed are still in it, and a group met there waits for processes that are
    gone. Each attempt therefore meets under its own prefix (``TORCHELASTIC_RESTART_COUNT``).
    """
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    served = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not served and rank == 0)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if device.type == "cuda":  # NCCL's objects (broadcast_object_list) go through the current device
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            store=dist.PrefixStore(f"graphlrp/attempt-{attempt}", store), rank=rank, world_size=size)
