"""``aggregate``: relevance per node, edge and parameter summed over a data set, and :class:`Aggregate`."""
from __future__ import annotations

import functools
import math
import os
import pickle
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ..composites import Composite
from ..errors import ArgumentTypeError, FileFormatError, InputError
from ..explainer import check_arguments, explainer_for
from ..export import check_bool, check_int
from ..graph import Graph
from ..memory import check_budget
from ..rules import Rule
from . import parameters
from .data import batches, check_target, classes_of, total_samples
from .sums import Sums

FORMAT = "graphlrp.aggregate"
VERSION = 1


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
    ``(num_classes,)`` dimension, ``num_classes = len(graph.outputs)``.

    Within a batch, messages are summed in the graph's dtype (one product per block and term) and
    added to float64 sums, so a float64 graph's sums do not depend on the batch size beyond
    float64 rounding, and no graph's error grows with the number of batches.
    """

    def __init__(self, graph: Graph, rule: Rule | None = None, composite: Composite | None = None,
                 by_class: bool = False, absolute: bool = False) -> None:
        check_arguments(graph, rule, composite)
        check_bool("by_class", by_class)
        check_bool("absolute", absolute)
        self.graph = graph
        self.rule, self.composite = rule, composite
        self.by_class, self.absolute = by_class, absolute
        #: explains every batch (the one :func:`graphlrp.explain` keeps for this graph and rule)
        self.explainer = explainer_for(graph, rule, composite)
        self.rules = [repr(r) for r in self.explainer.rules[1:]]
        self._sums = Sums(graph, len(graph.outputs) if by_class else 1, absolute)
        #: batches added (kept with a checkpoint, to save at the same points when resumed)
        self.batches = 0

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
        classes = classes_of(self.graph, x, target) if isinstance(x, Tensor) else target
        explanation = self.explainer(x, target=classes)
        self._sums.add(explanation, classes if self.by_class else None)
        self.batches += 1
        return self

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
        return self._shaped(self._sums.nodes.clone())

    @property
    def bias_relevance(self) -> Tensor:
        """Relevance each node's bias term absorbed, summed like :attr:`node_relevance`."""
        return self._shaped(self._sums.biases.clone())

    def edge_relevance(self, max_bytes: int | None = None) -> Tensor:
        """Every edge's relevance summed over the samples, ``(num_edges,)`` in :meth:`Graph.edges` order
        (``(num_classes, num_edges)`` by class). A result that would exceed ``max_bytes`` (default:
        half the available memory) is refused before anything is allocated."""
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
        return {"by_class": self.by_class, "absolute": self.absolute, "rules": self.rules}

    def _check_compatible(self, other: "Aggregate") -> None:
        if not _same_graph(self.fingerprint, other.fingerprint):
            raise InputError("the aggregates are of different graphs (structure or weights differ)")
        if self._settings() != other._settings():
            raise InputError(f"the aggregates differ in their settings: {self._settings()} against {other._settings()}")

    def __add__(self, other: "Aggregate") -> "Aggregate":
        if not isinstance(other, Aggregate):
            return NotImplemented
        self._check_compatible(other)
        total = Aggregate(self.graph, self.rule, self.composite, self.by_class, self.absolute)
        total.fingerprint = self.fingerprint
        for part in (self, other):
            part._sums.collapse()
            total._sums.counts += part._sums.counts
            total._sums.nodes += part._sums.nodes
            total._sums.biases += part._sums.biases
            for position in range(len(self.graph.blocks)):
                theirs = part._sums.weighted[position]
                if theirs is not None:
                    total._sums._weighted(position).add_(theirs)
        total.batches = self.batches + other.batches
        return total

    def state(self) -> dict[str, object]:
        """Everything the aggregate holds, as tensors, numbers and strings (what :meth:`save` writes)."""
        self._sums.collapse()
        return {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, **self._settings(),
                "batches": self.batches, "counts": self._sums.counts, "nodes": self._sums.nodes,
                "biases": self._sums.biases,
                "blocks": [self._sums._weighted(k) for k in range(len(self.graph.blocks))]}

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
        made = cls(graph, rule, composite, bool(state["by_class"]), bool(state["absolute"]))
        if not isinstance(state.get("fingerprint"), dict) or not _same_graph(state["fingerprint"], made.fingerprint):
            raise InputError(f"{os.fspath(path)!r} holds an aggregate of another graph (structure or weights differ)")
        if state["rules"] != made.rules:
            raise InputError(f"{os.fspath(path)!r} was aggregated with the rules {state['rules']}, not {made.rules}")
        sums = made._sums
        blocks = state["blocks"]
        shapes = [(sums.classes, *block.sum_shape) for block in graph.blocks]
        if not isinstance(blocks, list) or [tuple(b.shape) for b in blocks] != shapes:
            raise FileFormatError(f"{os.fspath(path)!r}: the sums do not fit the graph's blocks")
        sums.counts, sums.nodes, sums.biases, sums.weighted = state["counts"], state["nodes"], state["biases"], blocks
        made.batches = int(state["batches"])
        return made

    def __repr__(self) -> str:
        return (f"Aggregate(samples={self.count}, nodes={self.graph.num_nodes:,}, edges={self.graph.num_edges:,}, "
                f"by_class={self.by_class}, absolute={self.absolute})")


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
    checkpoint_every: int = 16,
) -> Aggregate:
    """Relevance per node, edge and parameter summed over a data set, at about the cost of explaining it.

    Parameters
    ----------
    graph : Graph
    data : Tensor or iterable
        ``(N, *graph.input_shape)`` samples, cut into ``batch_size`` batches; or any iterable of
        batches, ``(x, y)`` pairs (such as a ``DataLoader``) or tensors ``x``.
    target : int, sequence of int, Tensor, ``'predicted'`` or ``'label'``
        The class to explain: one for all, one per sample of the data set, each sample's largest
        output, or (iterables of pairs) each batch's ``y``.
    rule, composite : optional
        As for :func:`graphlrp.explain`.
    batch_size : int
        Samples explained at once when ``data`` is a tensor.
    by_class : bool
        Keep every sum per explained class.
    absolute : bool
        Sum ``|relevance|`` of every node, edge and bias instead of relevance.
    progress : bool
        Show a progress bar (tqdm) on stderr.
    checkpoint : path, optional
        Save the aggregate there every ``checkpoint_every`` batches and at the end (atomically);
        a call with the same arguments finding the file resumes after the samples it holds. The
        data must come in the same order (a ``DataLoader`` without shuffling).

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
    check_int("checkpoint_every", checkpoint_every, 1)
    check_bool("progress", progress)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise ArgumentTypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    if checkpoint is not None and Path(checkpoint).exists():
        result = Aggregate.load(checkpoint, graph, rule, composite)
        if (result.by_class, result.absolute) != (by_class, absolute):
            raise InputError(f"checkpoint {os.fspath(checkpoint)!r} holds an aggregate with by_class="
                             f"{result.by_class}, absolute={result.absolute}; asked for {by_class}, {absolute}")
    else:
        result = Aggregate(graph, rule, composite, by_class, absolute)
    from tqdm.auto import tqdm

    skip = result.count
    with tqdm(total=total_samples(data), initial=skip, unit="sample", desc="aggregate", disable=not progress) as bar:
        for batch in batches(data, target, batch_size, skip):
            result.update(batch.x, batch.target)
            bar.update(len(batch.x))
            if checkpoint is not None and result.batches % checkpoint_every == 0:
                result.save(checkpoint)
    if result.count == 0:
        raise InputError("data holds no samples")
    if checkpoint is not None:
        result.save(checkpoint)
    return result
