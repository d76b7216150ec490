"""A data set cut into chunks: a fixed number of samples by sample index, each explained in batches.

Chunk ``c`` holds the samples ``[c·size, (c+1)·size)`` of the data set (the last one may hold
fewer) and is explained in batches of ``batch_size`` counted from its first sample. What a chunk
sums therefore depends on its index alone: never on which process explains it, how many
processes there are, or how a ``DataLoader`` batches the stream.

Where the chunks come from:

* a tensor, a map-style :class:`~torch.utils.data.Dataset`, or a ``DataLoader`` reading one in
  order (a sequential sampler): by index, so a process reads only the samples of its own chunks;
* any other iterable (an ``IterableDataset``, a shuffling loader, a generator): as a stream that
  every process reads from its start, keeping the samples of its own chunks. Every process must
  then see the same stream (no unseeded shuffling).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, default_collate

from ..errors import ArgumentTypeError
from .data import Batch, check_samples, per_sample, split_item


@dataclass(frozen=True)
class Chunk:
    """Chunk ``index`` of a data set, as the batches it is explained in (made when iterated)."""

    index: int
    batches: Iterable[Batch]


@dataclass(frozen=True)
class Share:
    """The chunks one process explains: runs of ``span`` consecutive chunks from chunk ``start``,
    the runs ``offset, offset + step, offset + 2·step, …``.

    Run ``j`` holds the chunks ``[start + j·span, start + (j + 1)·span)``.
    """

    start: int
    span: int
    offset: int = 0
    step: int = 1

    def __contains__(self, index: int) -> bool:
        return index >= self.start and ((index - self.start) // self.span) % self.step == self.offset

    def indices(self, count: int) -> Iterator[int]:
        """The chunks of this share among chunks ``0 .. count - 1``, in order."""
        for run in itertools.count(self.offset, self.step):
            first = self.start + run * self.span
            if first >= count:
                return
            yield from range(first, min(first + self.span, count))


def _by_index(data: object) -> tuple[Dataset, Callable[[list], object]] | None:
    """The map-style data set behind ``data`` and how its samples are batched, if it is read by index."""
    if isinstance(data, DataLoader):
        in_order = isinstance(data.sampler, SequentialSampler) and not isinstance(data.dataset, IterableDataset)
        return (data.dataset, data.collate_fn) if in_order else None
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__"):
        return data, default_collate
    return None


def chunk_count(data: object, size: int) -> int | None:
    """Chunks of ``size`` samples in ``data``, where its length is known without reading it."""
    samples = len(data) if isinstance(data, Tensor) else None
    found = _by_index(data)
    if found is not None:
        samples = len(found[0])
    return None if samples is None else -(-samples // size)


def chunks(data: object, target: object, size: int, batch_size: int, share: Share) -> Iterator[Chunk]:
    """The chunks of ``share`` that ``data`` has samples for, in order.

    Parameters
    ----------
    data : Tensor, Dataset, DataLoader or iterable
        The data set (see the module's docstring).
    target : object
        As checked by :func:`~graphlrp.aggregation.data.check_target`.
    size, batch_size : int
        Samples per chunk, and per batch within a chunk.
    share : Share
        The chunks wanted.
    """
    if isinstance(data, Tensor):
        return _tensor_chunks(data, target, size, batch_size, share)
    found = _by_index(data)
    if found is not None:
        return _dataset_chunks(*found, target, size, batch_size, share)
    if not isinstance(data, Iterable):
        raise ArgumentTypeError(f"data must be a tensor of samples, a data set or an iterable of (x, y) batches, "
                                f"got {type(data).__name__}")
    return _stream_chunks(data, target, size, batch_size, share)


# -- by index -----------------------------------------------------------------------------------
def _tensor_chunks(data: Tensor, target: object, size: int, batch_size: int, share: Share) -> Iterator[Chunk]:
    check_samples(data, target)

    def explained(start: int, end: int) -> Iterator[Batch]:
        for begin in range(start, end, batch_size):
            stop = min(begin + batch_size, end)
            yield Batch(data[begin:stop], per_sample(target, begin, stop), begin)

    for index in share.indices(chunk_count(data, size)):
        yield Chunk(index, explained(index * size, min((index + 1) * size, len(data))))


def _dataset_chunks(dataset: Dataset, collate: Callable[[list], object], target: object, size: int,
                    batch_size: int, share: Share) -> Iterator[Chunk]:
    samples = len(dataset)

    def explained(start: int, end: int) -> Iterator[Batch]:
        for begin in range(start, end, batch_size):
            stop = min(begin + batch_size, end)
            x, labels = split_item(collate([dataset[i] for i in range(begin, stop)]), target)
            yield Batch(x, labels if target == "label" else per_sample(target, begin, stop), begin)

    for index in share.indices(-(-samples // size)):
        yield Chunk(index, explained(index * size, min((index + 1) * size, samples)))


# -- as a stream ----------------------------------------------------------------------------------
def _pieces(data: Iterable, target: object, size: int) -> Iterator[tuple[int, list[tuple[Tensor, Tensor | None]]]]:
    """``(chunk index, pieces)`` of every chunk of the stream, cut from its batches at chunk boundaries."""
    index, pieces, held = 0, [], 0
    for item in data:
        x, labels = split_item(item, target)
        while len(x):
            taken = min(size - held, len(x))
            pieces.append((x[:taken], None if labels is None else labels[:taken]))
            x, labels, held = x[taken:], None if labels is None else labels[taken:], held + taken
            if held == size:
                yield index, pieces
                index, pieces, held = index + 1, [], 0
    if held:
        yield index, pieces


def _stream_chunks(data: Iterable, target: object, size: int, batch_size: int, share: Share) -> Iterator[Chunk]:
    for index, pieces in _pieces(data, target, size):
        if index in share:
            yield Chunk(index, _rebatched(pieces, target, index * size, batch_size))


def _rebatched(pieces: Sequence[tuple[Tensor, Tensor | None]], target: object, start: int,
               batch_size: int) -> Iterator[Batch]:
    """The samples of a chunk's pieces in batches of ``batch_size``."""
    x = pieces[0][0] if len(pieces) == 1 else torch.cat([piece for piece, _ in pieces])
    labels = None
    if target == "label":
        labels = pieces[0][1] if len(pieces) == 1 else torch.cat([piece for _, piece in pieces])
    for begin in range(0, len(x), batch_size):
        stop = min(begin + batch_size, len(x))
        chosen = labels[begin:stop] if labels is not None else per_sample(target, start + begin, start + stop)
        yield Batch(x[begin:stop], chosen, start + begin)

