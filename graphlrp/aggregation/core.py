"""``aggregate``: relevance per node, edge and parameter summed over a data set, and :class:`Aggregate`."""
from __future__ import annotations

import functools
import itertools
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor

from ..composites import Composite
from ..errors import ArgumentTypeError, FileFormatError, GraphLRPError, InputError
from ..explainer import check_arguments, explainer_for
from ..export import check_bool, check_int
from ..graph import Graph
from ..memory import check_budget
from ..rules import Rule
from . import parameters
from .chunks import Chunk, Share, chunk_count, chunks
from .data import Batch, check_target, classes_of, total_samples
from .distributed import Processes, processes
from .sums import SlotWeights, Sums
from .tree import ChunkTree

FORMAT = "graphlrp.aggregate"
VERSION = 3


def _fingerprint(graph: Graph) -> dict[str, object]:
    """What identifies a graph's structure and weights (one pass over its weights and biases)."""
    checksum = sum(float(block.held()[-1].abs().sum(dtype=torch.float64)) for block in graph.blocks
                   if hasattr(block, "held"))
    checksum += sum(float(level.bias.abs().sum(dtype=torch.float64)) for level in graph.levels if level.bias is not None)
    return {"num_nodes": graph.num_nodes, "num_edges": graph.num_edges, "checksum": checksum,
            "blocks": [f"{b.kind}:{b.src}->{b.dst}:{b.num_edges}" for b in graph.blocks]}


def _same_graph(a: dict[str, object], b: dict[str, object]) -> bool:
    """Whether two fingerprints are of one graph (checksums equal up to summation order)."""
    same_structure = all(a[key] == b[key] for key in ("num_nodes", "num_edges", "blocks"))
    return same_structure and math.isclose(a["checksum"], b["checksum"], rel_tol=1e-9, abs_tol=1e-300)


class Aggregate:
    """Relevance summed over the samples of a data set, in float64.

    Made by :func:`aggregate`, or empty (``Aggregate(graph, rule=...)``) and filled with
    :meth:`update`. Two aggregates of one graph, rule and setting add (``a + b``); :meth:`save`
    and :meth:`load` keep one in a file.

    With ``by_class=True`` every sum is kept per explained class: values gain a leading
    ``(num_classes,)`` dimension, ``num_classes = len(graph.outputs)``. With ``edges=False`` only
    the sums per parameter (and per node) are kept: a convolution sums its edges per kernel
    weight, so its sums are the size of its weight instead of its edges, and
    :meth:`edge_relevance` is refused for it.

    Samples are added a chunk at a time (:func:`aggregate`'s chunks; a batch given to
    :meth:`update`): a chunk's messages are summed in the graph's dtype within each batch (one
    product per block and term), its batches in float64, and the chunk's float64 sums are then
    added to the aggregate's. A float64 graph's sums do not depend on the batch size beyond
    float64 rounding, and no graph's error grows with the number of chunks.
    """

    def __init__(self, graph: Graph, rule: Rule | None = None, composite: Composite | None = None,
                 by_class: bool = False, absolute: bool = False, edges: bool = True) -> None:
        check_arguments(graph, rule, composite)
        check_bool("by_class", by_class)
        check_bool("absolute", absolute)
        check_bool("edges", edges)
        self.graph = graph
        self.rule, self.composite = rule, composite
        self.by_class, self.absolute, self.edges = by_class, absolute, edges
        #: explains every batch (the one :func:`graphlrp.explain` keeps for this graph and rule)
        self.explainer = explainer_for(graph, rule, composite)
        self.rules = [repr(r) for r in self.explainer.rules[1:]]
        self._slot_weights = SlotWeights(graph, absolute, edges)
        self._sums = self._new_sums()
        #: chunks added (with a checkpoint: the chunks ``0 .. chunks - 1`` of the data set, its ledger)
        self.chunks = 0
        #: ``(chunk_size, batch_size)`` of :func:`aggregate`'s chunks (``None`` for sums made otherwise)
        self.chunking: tuple[int, int] | None = None
        #: :func:`aggregate`'s chunk sums as its tree holds them (what a checkpoint resumes from)
        self.tree: ChunkTree | None = None

    def _new_sums(self) -> Sums:
        return Sums(self.graph, len(self.graph.outputs) if self.by_class else 1, self.absolute, self._slot_weights)

    @functools.cached_property
    def fingerprint(self) -> dict[str, object]:
        """What identifies the graph's structure and weights, checked when aggregates are added,
        saved and loaded (one pass over the weights, made when first needed)."""
        return _fingerprint(self.graph)

    # -- adding -----------------------------------------------------------------------------
    def update(self, x: Tensor, target: object) -> "Aggregate":
        """Explain the batch ``x`` for ``target`` (an int, per-sample classes, or ``'predicted'``)
        and add it; returns ``self``."""
        target = check_target(target)
        if target == "label":
            raise InputError("update takes the classes themselves: pass the labels as target=")
        if isinstance(x, Tensor) and isinstance(target, Tensor) and target.numel() not in (1, len(x)):
            raise InputError(f"target has {target.numel()} entries for a batch of {len(x)}; give one, or one per sample")
        if isinstance(target, Tensor) and target.numel() == 1:
            target = int(target.reshape(()))
        self.add_chunk(self.chunk_sums([Batch(x, target, 0)]))
        return self

    def chunk_sums(self, batches: Iterable[Batch]) -> Tensor:
        """The float64 sums of one chunk, explained batch by batch, as a vector
        (:meth:`~graphlrp.aggregation.sums.Sums.vector`); nothing is added to the aggregate."""
        return self._chunk_sums_in(self._new_sums(), batches)

    def _chunk_sums_in(self, sums: Sums, batches: Iterable[Batch]) -> Tensor:
        """:meth:`chunk_sums` in ``sums`` (zeroed first); the vector is ``sums``' own storage."""
        sums.reset()
        for batch in batches:
            classes = classes_of(self.graph, batch.x, batch.target) if isinstance(batch.x, Tensor) else batch.target
            explanation = self.explainer(batch.x, target=classes, input_relevance=not sums.inputs_from_edges)
            sums.add(explanation, classes if self.by_class else None)
        return sums.vector()

    def add_chunk(self, vector: Tensor) -> None:
        """Add the sums of one chunk, a vector made by :meth:`chunk_sums`, element by element."""
        self._sums.add_vector(vector)
        self.chunks += 1

    # -- reading ----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Samples added."""
        return int(self._sums.counts.sum())

    @property
    def class_counts(self) -> Tensor:
        """Samples added per class, ``(num_classes,)`` (``(1,)`` unless ``by_class``)."""
        return self._sums.counts.clone()

    def _shaped(self, values: Tensor) -> Tensor:
        return values if self.by_class else values[0]

    @property
    def node_relevance(self) -> Tensor:
        """Relevance of every node summed over the samples (of ``|relevance|`` if ``absolute``),
        ``(num_nodes,)`` in global node id order; ``(num_classes, num_nodes)`` by class."""
        return self._shaped(self._sums.node_values())

    @property
    def bias_relevance(self) -> Tensor:
        """Relevance each node's bias term absorbed, summed like :attr:`node_relevance`."""
        return self._shaped(self._sums.biases.clone())

    def edge_relevance(self, max_bytes: int | None = None) -> Tensor:
        """Every edge's relevance summed over the samples, ``(num_edges,)`` in :meth:`Graph.edges` order
        (``(num_classes, num_edges)`` by class). A result that would exceed ``max_bytes`` (default:
        half the available memory) is refused before anything is allocated."""
        per_parameter = [block.kind for block, own in zip(self._sums.blocks, self.graph.blocks) if block is not own]
        if per_parameter:
            raise InputError(f"aggregated with edges=False: the edges of {len(per_parameter)} block(s) "
                             f"({', '.join(sorted(set(per_parameter)))}) were summed per parameter only; "
                             f"aggregate with edges=True for relevance per edge")
        classes = self._sums.classes
        check_budget(f"summed relevance of {self.graph.num_edges:,} edges × {classes} class(es)",
                     self.graph.num_edges * classes * 8 * 2, max_bytes, self.graph.device)
        parts = [self._sums.edge_values(k) for k in range(len(self.graph.blocks))]
        values = torch.cat(parts, dim=1) if parts else self._sums.nodes.new_zeros((classes, 0))
        return self._shaped(values)

    def parameter_relevance(self) -> dict[str, Tensor]:
        """Relevance per parameter, keyed and shaped like ``model.named_parameters()``.

        Every weight's value is the summed messages of the edges that share it (a convolution's
        kernel weight: all output positions), every bias's the relevance its bias term absorbed;
        see :mod:`graphlrp.aggregation.parameters` for folded batch norms, pruned layers and
        graphs not lowered from a model. By class, values gain a leading class dimension.
        """
        named = parameters.collect(self.graph, self._sums.weight_values, self._sums.edge_values,
                                   lambda level: self._sums.biases[:, level.offset : level.offset + level.size])
        return {name: self._shaped(values) for name, values in named.items()}

    # -- combining and files ----------------------------------------------------------------
    def _settings(self) -> dict[str, object]:
        return {"by_class": self.by_class, "absolute": self.absolute, "edges": self.edges, "rules": self.rules}

    def _check_compatible(self, other: "Aggregate") -> None:
        if not _same_graph(self.fingerprint, other.fingerprint):
            raise InputError("the aggregates are of different graphs (structure or weights differ)")
        if self._settings() != other._settings():
            raise InputError(f"the aggregates differ in their settings: {self._settings()} against {other._settings()}")

    def __add__(self, other: "Aggregate") -> "Aggregate":
        if not isinstance(other, Aggregate):
            return NotImplemented
        self._check_compatible(other)
        total = Aggregate(self.graph, self.rule, self.composite, self.by_class, self.absolute, self.edges)
        total.fingerprint = self.fingerprint
        for part in (self, other):
            total._sums.add_sums(part._sums)
        total.chunks = self.chunks + other.chunks
        return total

    def state(self) -> dict[str, object]:
        """Everything the aggregate holds, as tensors, numbers and strings (what :meth:`save` writes)."""
        self._sums.collapse()
        return {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, **self._settings(),
                "chunks": self.chunks, "chunking": None if self.chunking is None else list(self.chunking),
                "counts": self._sums.counts, "nodes": self._sums.node_values(),
                "biases": self._sums.biases,
                "blocks": list(self._sums.weighted),
                "tree": [] if self.tree is None else [[*node, sums] for node, sums in self.tree.items()]}

    def save(self, path: str | os.PathLike) -> None:
        """Write the aggregate to ``path`` atomically (a temporary file in the same folder, then
        renamed over ``path``): a reader sees the old file or the new one, never a part."""
        target = Path(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(self.state(), stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, graph: Graph, rule: Rule | None = None,
             composite: Composite | None = None) -> "Aggregate":
        """An aggregate written by :meth:`save`, for ``graph``; ``rule``/``composite`` (to add more
        samples) must be the ones it was made with.

        Raises :class:`~graphlrp.errors.FileFormatError` for a file that is not an aggregate, and
        :class:`~graphlrp.errors.InputError` for one of another graph, rule or composite.
        """
        try:
            state = torch.load(path, map_location=graph.device, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise FileFormatError(f"{os.fspath(path)!r} is not a graphlrp aggregate file: {error}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
            raise FileFormatError(f"{os.fspath(path)!r} is not a graphlrp aggregate file (version {VERSION})")
        made = cls(graph, rule, composite, bool(state["by_class"]), bool(state["absolute"]),
                   bool(state.get("edges", True)))
        if not isinstance(state.get("fingerprint"), dict) or not _same_graph(state["fingerprint"], made.fingerprint):
            raise InputError(f"{os.fspath(path)!r} holds an aggregate of another graph (structure or weights differ)")
        if state["rules"] != made.rules:
            raise InputError(f"{os.fspath(path)!r} was aggregated with the rules {state['rules']}, not {made.rules}")
        sums = made._sums
        blocks = state["blocks"]
        shapes = [(sums.classes, *block.sum_shape) for block in sums.blocks]
        if not isinstance(blocks, list) or [tuple(b.shape) for b in blocks] != shapes:
            raise FileFormatError(f"{os.fspath(path)!r}: the sums do not fit the graph's blocks")
        sums.load_parts(state["counts"], state["nodes"], state["biases"], blocks)
        made.chunks = int(state["chunks"])
        made.chunking = None if state["chunking"] is None else tuple(int(n) for n in state["chunking"])
        if made.chunking is not None:
            made.tree = ChunkTree()
            for level, index, vector in state["tree"]:
                made.tree.add(int(level), int(index), vector, owned=True)
        return made

    def __repr__(self) -> str:
        return (f"Aggregate(samples={self.count}, nodes={self.graph.num_nodes:,}, edges={self.graph.num_edges:,}, "
                f"by_class={self.by_class}, absolute={self.absolute})")


def _resumed(checkpoint: str | os.PathLike | None, made: Aggregate) -> Aggregate:
    """The aggregate a checkpoint file holds, if there is one, checked against the one asked for."""
    if checkpoint is None or not Path(checkpoint).exists():
        return made
    found = Aggregate.load(checkpoint, made.graph, made.rule, made.composite)
    if (found.by_class, found.absolute, found.edges) != (made.by_class, made.absolute, made.edges):
        raise InputError(f"checkpoint {os.fspath(checkpoint)!r} holds an aggregate with by_class={found.by_class}, "
                         f"absolute={found.absolute}, edges={found.edges}; asked for {made.by_class}, "
                         f"{made.absolute}, {made.edges}")
    if found.chunking != made.chunking:
        asked = "chunk_size={}, batch_size={}".format(*made.chunking)
        held = "no chunks of a data set" if found.chunking is None else "chunk_size={}, batch_size={}".format(
            *found.chunking)
        raise InputError(f"checkpoint {os.fspath(checkpoint)!r} holds {held}; asked for {asked} (a run resumes "
                         f"with the chunks it was started with)")
    return found


def _start(made: Aggregate, checkpoint: str | os.PathLike | None, group: Processes) -> Aggregate:
    """The aggregate to continue on every process: rank 0 reads the checkpoint and sends its tree."""
    result, failure = made, None
    if group.rank == 0:
        try:
            result = _resumed(checkpoint, made)
        except (GraphLRPError, OSError) as error:
            failure = error
    if group.size == 1:
        if failure is not None:
            raise failure
        return result
    held = group.broadcast_object(failure if failure is not None else
                                  (result.chunks, [node for node, _ in result.tree.items()]))
    if isinstance(held, BaseException):
        raise held
    if group.rank == 0:
        for _, sums in result.tree.items():
            group.broadcast(sums)
    else:
        result.chunks = held[0]
        for level, index in held[1]:
            result.tree.add(level, index, group.broadcast(torch.empty_like(made._sums.values)), owned=True)
    return result


def _run_length(known: int | None, done: int, size: int, checkpoint_every: int | None) -> int:
    """Consecutive chunks a process explains between two exchanges: a power of two that divides
    ``done`` (so every run is one node of the chunk tree), at most :data:`LONGEST_RUN`, and at most
    ``checkpoint_every / size`` with a checkpoint. When the number of chunks is ``known``, the
    longest such run that gives the busiest process at most :data:`IMBALANCE` more chunks than
    the most even sharing would: longer runs mean fewer exchanges, but runs too long leave
    processes idle in the last round."""
    longest = LONGEST_RUN
    if checkpoint_every is not None:
        longest = min(longest, checkpoint_every // size)
    lengths = [1]
    while 2 * lengths[-1] <= longest and done % (2 * lengths[-1]) == 0:
        lengths.append(2 * lengths[-1])
    if known is None:
        return lengths[-1]
    busiest = {length: _busiest(known - done, length, size) for length in lengths}
    allowed = min(busiest.values()) * (1 + IMBALANCE)
    return max(length for length, chunks in busiest.items() if chunks <= allowed)


def _busiest(chunks: int, length: int, size: int) -> int:
    """The most chunks one of ``size`` processes explains when ``chunks`` are shared in runs of ``length``."""
    rounds, left = divmod(chunks, length * size)
    return rounds * length + min(length, left)


#: the most consecutive chunks a process explains before the processes exchange their sums
LONGEST_RUN = 16
#: the share of extra chunks the busiest process may explain so that the runs are longer
IMBALANCE = 1 / 8


def _up_to(mine: Iterator[Chunk], end: int) -> Iterator[Chunk]:
    """The chunks of ``mine`` before chunk ``end``, taken no further than chunk ``end - 1``."""
    for chunk in mine:
        yield chunk
        if chunk.index == end - 1:
            return


class _Rounds:
    """What the processes do with a round's runs after they are explained: add each run's sums to
    the tree, move the progress bar, save the checkpoint when due."""

    def __init__(self, result: Aggregate, run_length: int, checkpoint: str | os.PathLike | None,
                 checkpoint_every: int, group: Processes, bar: object) -> None:
        self.result, self.group, self.bar = result, group, bar
        self.level, self.first = run_length.bit_length() - 1, result.chunks // run_length
        self.run_samples = run_length * result.chunking[0]
        self.checkpoint = checkpoint if group.rank == 0 else None
        self.checkpoint_every, self.saved = checkpoint_every, result.chunks

    def run_index(self, turn: int, rank: int) -> int:
        """The tree node (at the runs' level) of the run process ``rank`` explains in round ``turn``."""
        return self.first + turn * self.group.size + rank

    def add(self, turn: int, sent: Tensor, received: Callable[[], list[Tensor]]) -> bool:
        """Add the run sums of round ``turn`` (this process ``sent``; ``received`` waits for every
        process's, in rank order); whether the data ended in it."""
        ended, tree = False, self.result.tree
        for rank, vector in enumerate(received()):
            samples = self.result._sums.samples_in(vector)
            if samples:
                tree.add(self.level, self.run_index(turn, rank), vector, owned=True)
                self.result.chunks += -(-samples // self.result.chunking[0])
                self.bar.update(samples)
            elif self.group.size > 1:
                tree.release(vector)
            ended = ended or samples < self.run_samples
        if self.group.size > 1:
            tree.release(sent)  # every process's sums arrived in buffers of their own
        if self.checkpoint is not None and self.result.chunks - self.saved >= self.checkpoint_every:
            self.save()
        return ended

    def finish(self) -> None:
        """Make the aggregate's sums the tree's total."""
        total = self.result.tree.total()
        if total is not None:
            self.result._sums.load_vector(total)

    def save(self) -> None:
        if self.checkpoint is not None:
            self.finish()
            self.result.save(self.checkpoint)
            self.saved = self.result.chunks


def aggregate(
    graph: Graph,
    data: object,
    target: object,
    rule: Rule | None = None,
    composite: Composite | None = None,
    batch_size: int = 64,
    by_class: bool = False,
    absolute: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 4,
    chunk_size: int = 512,
    distributed: bool | None = None,
    edges: bool = True,
) -> Aggregate:
    """Relevance per node, edge and parameter summed over a data set, at about the cost of explaining it.

    The data set is cut into chunks of ``chunk_size`` samples by sample index, each explained in
    batches of ``batch_size`` and summed in float64 on its own; the chunks' sums are added in a
    fixed binary tree over chunk index (:mod:`graphlrp.aggregation.tree`). The result depends on
    the data, ``chunk_size`` and ``batch_size`` alone: the same bits on one process and on any
    number of them (:mod:`graphlrp.aggregation.chunks`).

    Parameters
    ----------
    graph : Graph
    data : Tensor, Dataset or iterable
        ``(N, *graph.input_shape)`` samples; a map-style data set of samples ``(x, y)`` or ``x``;
        or any iterable of batches, ``(x, y)`` pairs (such as a ``DataLoader``) or tensors ``x``.
    target : int, sequence of int, Tensor, ``'predicted'`` or ``'label'``
        The class to explain: one for all, one per sample of the data set, each sample's largest
        output, or (data of pairs) each sample's ``y``.
    rule, composite : optional
        As for :func:`graphlrp.explain`.
    batch_size : int
        Samples explained at once.
    by_class : bool
        Keep every sum per explained class.
    absolute : bool
        Sum ``|relevance|`` of every node, edge and bias instead of relevance.
    progress : bool
        Show a progress bar (tqdm) on stderr (on the first process only).
    checkpoint : path, optional
        Save the aggregate there, with the number of chunks it holds (its ledger: chunks
        ``0 .. k - 1``), every ``checkpoint_every`` chunks and at the end, atomically; a call
        with the same arguments finding the file resumes at chunk ``k`` and returns the same
        bits as a run that was never stopped. Iterables must yield the same samples in the same
        order again (a ``DataLoader`` without shuffling). With several processes the first one
        writes the file and sends what it reads to the others.
    chunk_size : int
        Samples per chunk: the unit of work of a process and of a checkpoint's ledger.
    edges : bool
        Keep every edge's sums (default), or only the sums per parameter and node: a
        convolution's edges are then summed per kernel weight by the weight gradient's
        convolution, which costs about one convolution per batch and holds no more than the
        weights (a convolution at ``P`` output positions otherwise holds ``P`` sums per weight).
    distributed : bool, optional
        Share the work between the processes of the default ``torch.distributed`` process group:
        ``None`` (default) when one is initialised, ``True`` also initialising it from the
        environment (as ``torchrun`` sets it; NCCL for a graph on a GPU, else gloo), ``False``
        never. The chunks from ``k`` on (``k``: the chunks a checkpoint holds) are cut into runs
        of consecutive chunks; process ``r`` of ``W`` explains the runs ``r, r + W, …``, the
        processes exchange one vector per run after every round of ``W`` runs, and every process
        returns the same aggregate.

    Returns
    -------
    Aggregate

    Raises
    ------
    ArgumentTypeError, InputError
        For arguments of the wrong type or value (checked before any explanation), and whatever
        :func:`graphlrp.explain` refuses.
    """
    check_arguments(graph, rule, composite)
    target = check_target(target)
    check_int("batch_size", batch_size, 1)
    check_int("chunk_size", chunk_size, 1)
    check_int("checkpoint_every", checkpoint_every, 1)
    check_bool("progress", progress)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ArgumentTypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    group = processes(distributed, graph.device)
    made = Aggregate(graph, rule, composite, by_class, absolute, edges)
    made.chunking, made.tree = (chunk_size, batch_size), ChunkTree()
    result = _start(made, checkpoint, group)
    from tqdm.auto import tqdm

    known = chunk_count(data, chunk_size)
    if known is not None and result.chunks > known:
        raise InputError(f"checkpoint {os.fspath(checkpoint)!r} holds {result.chunks} chunks of {chunk_size} samples; "
                         f"data holds {known}: it is not the data set the checkpoint was made from")
    run_length = _run_length(known, result.chunks, group.size, None if checkpoint is None else checkpoint_every)
    mine = chunks(data, target, chunk_size, batch_size, Share(result.chunks, run_length, group.rank, group.size))
    per_round = run_length * group.size
    rounds = itertools.count() if known is None else range(-(-(known - result.chunks) // per_round))
    with tqdm(total=total_samples(data), initial=result.count, unit="sample", desc="aggregate",
              disable=not progress or group.rank != 0) as bar:
        run = _Rounds(result, run_length, checkpoint, checkpoint_every, group, bar)
        workspace: Sums | None = None
        pending = None  # a round's sums are added (and exchanged) while the next round is explained
        for turn in rounds:
            index = run.run_index(turn, group.rank)
            explained = ChunkTree(result.tree.spare)
            for chunk in _up_to(mine, (index + 1) * run_length):
                workspace = workspace if workspace is not None else result._new_sums()
                sums = result._chunk_sums_in(workspace, chunk.batches)
                workspace.move_to(explained.buffer(sums))  # the tree keeps the chunk's sums as they are
                explained.add(0, chunk.index, sums, owned=True)
            vector = explained.pop(run.level, index)
            if vector is None:  # this process's share ended before the others': it sends empty sums
                vector = torch.zeros_like(result._sums.values)
            if pending is not None and run.add(*pending):
                pending = None
                break
            pending = (turn, vector, group.gather(vector, functools.partial(result.tree.buffer, vector)))
        if pending is not None:
            run.add(*pending)
    run.finish()
    if result.count == 0:
        raise InputError("data holds no samples")
    run.save()
    return result
