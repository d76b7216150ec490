"""``Explainer``: one way of explaining a graph (a rule or composite), and ``explain``.

An :class:`Explainer` owns what is about explaining a graph in one particular way: the rule of
every level, resolved once; and a :class:`~graphlrp.workspace.Workspace` with each level's plan,
the blocks' transformed weights and the range checks, kept between calls. The
:class:`~graphlrp.Graph` is plain data: explaining only reads it. :func:`explain` is the one-call
form; it keeps a workspace per graph (freed with the graph), so that a loop of ``explain`` calls
reuses what the first call worked out.
"""
from __future__ import annotations

import math
import weakref
from contextlib import nullcontext
from typing import Sequence

import torch
from torch import Tensor

from .composites import Composite
from .determinism import deterministic as deterministic_mode
from .errors import ArgumentTypeError, IndexOutOfRangeError, InputError, NumericRangeError
from .explanation import Explanation
from .graph import Graph, check_finite_input
from .layout import is_node_major
from .propagate import LevelRecord, Trace, redistribute_level, run_forward
from .rules import Rule
from .workspace import Workspace

class Explainer:
    """Explain a graph with one rule, or one composite (a rule per level).

    ``explainer(x, target=...)`` returns an :class:`~graphlrp.Explanation`, as
    :func:`graphlrp.explain` does. The rule of every level is resolved when the explainer is made
    (make a new one after changing the composite's entries; a rule's parameters may change at any
    time); plans and transformed weights are made on first use and kept until :meth:`clear`.

    Parameters
    ----------
    graph : Graph
        The network, e.g. from :func:`graphlrp.lower`; only read.
    rule : Rule, optional
        One rule for every level (default ``Epsilon()`` when no composite is given).
    composite : Composite, optional
        A rule per level; give ``rule`` or ``composite``, not both.
    cache_weights : bool
        Whether transformed weights are kept between calls (:attr:`cache_weights`).
    deterministic : bool
        Whether every call runs in :func:`graphlrp.deterministic` mode (bit for bit the same
        relevance on every run, also on CUDA).

    Raises
    ------
    ArgumentTypeError
        ``graph``, ``rule``, ``composite``, ``cache_weights`` or ``deterministic`` of the wrong type.
    InputError
        Both ``rule`` and ``composite``.

    Examples
    --------
    >>> explainer = graphlrp.Explainer(graph, composite=graphlrp.composites.EpsilonPlus())
    >>> for x, y in loader:
    ...     relevance = explainer(x, target=y).input_relevance
    """

    def __init__(self, graph: Graph, rule: Rule | None = None, composite: Composite | None = None,
                 cache_weights: bool = True, deterministic: bool = False) -> None:
        check_arguments(graph, rule, composite)
        _check_flag("cache_weights", cache_weights)
        _check_flag("deterministic", deterministic)
        self.graph = graph
        #: whether every call runs in :func:`graphlrp.deterministic` mode
        self.deterministic = deterministic
        #: the composite that chose the rules (``Composite(default=rule)`` for one rule)
        self.composite = composite if composite is not None else Composite(default=rule)
        self._workspace = Workspace(cache_weights)
        #: the rule of every level (``None`` for the input level)
        self.rules: tuple[Rule | None, ...] = tuple(self.composite.rules(graph))

    @property
    def cache_weights(self) -> bool:
        """Whether transformed weights (``W⁺``, ``W + γW⁺``, …) are kept between calls.

        ``True`` (the default): kept where that is faster — CSR and convolution operands always;
        dense blocks compute products with node-major operands of ``PANELS_FROM_BATCH`` (32)
        samples or more panel by panel inside each product (nothing kept,
        :mod:`graphlrp.blocks.dense`) and keep the transformed matrix for smaller or batch-major
        operands. ``False``: nothing is kept; dense blocks always use panels, other blocks build
        their transformed weights per level and call and drop them when the level is done (and
        their forward pass is the plain ``W a``). Setting ``False`` drops what is kept.
        """
        return self._workspace.cache_weights

    @cache_weights.setter
    def cache_weights(self, value: bool) -> None:
        _check_flag("cache_weights", value)
        self._workspace.cache_weights = value

    def clear(self) -> None:
        """Drop everything kept between calls: level plans, transformed weights, range checks."""
        self._workspace.clear()

    def __call__(self, x: Tensor, target: int | Sequence[int] | Tensor | None = None,
                 output_relevance: Tensor | None = None, *, input_relevance: bool = True) -> Explanation:
        """Explain the graph's output for the batch ``x``; see :func:`graphlrp.explain` for the
        arguments, the result and the errors.

        ``input_relevance=False`` leaves the input level's relevance zero and skips the products
        that would move it there (the last backward step): every other level's relevance, and
        every edge's message, are the same. Data-set aggregation uses it where the summed input
        relevance follows from the summed edge messages.
        """
        _check_flag("input_relevance", input_relevance)
        skipped = frozenset() if input_relevance else frozenset({self.graph.levels[0].index})
        with deterministic_mode() if self.deterministic else nullcontext():
            return _explain(self.graph, self._workspace, self.rules, x, target, output_relevance, skipped)

    def __repr__(self) -> str:
        return (f"Explainer({self.composite!r}, cache_weights={self.cache_weights}, "
                f"graph with {len(self.graph.levels)} levels)")


#: per graph, the workspace :func:`explain` keeps for it (freed with the graph: a workspace holds
#: no reference to it)
_KEPT: "weakref.WeakKeyDictionary[Graph, Workspace]" = weakref.WeakKeyDictionary()


def _kept_workspace(graph: Graph) -> Workspace:
    workspace = _KEPT.get(graph)
    if workspace is None:
        workspace = _KEPT[graph] = Workspace()
    return workspace


def _setting(rule: Rule | None, composite: Composite | None) -> tuple:
    return ("rule", rule) if composite is None else ("composite", composite.setting())


def explainer_for(graph: Graph, rule: Rule | None = None, composite: Composite | None = None) -> Explainer:
    """An explainer that shares what :func:`explain` keeps for ``graph``.

    Its plans, transformed weights and range checks are those of every ``explain`` call on the
    graph (keyed by the rules' groups and weight transforms, so that rules made anew for every
    call reuse them), and :meth:`Explainer.clear` drops them for all.
    """
    explainer = Explainer(graph, rule, composite)
    explainer._workspace = _kept_workspace(graph)
    return explainer


def explain(
    graph: Graph,
    x: Tensor,
    target: int | Sequence[int] | Tensor | None = None,
    rule: Rule | None = None,
    composite: Composite | None = None,
    output_relevance: Tensor | None = None,
    deterministic: bool = False,
) -> Explanation:
    """Explain the graph's output for the batch ``x`` with Layer-wise Relevance Propagation.

    The one-call form of :class:`Explainer`: it keeps, per graph (freed with the graph), the
    level plans, transformed weights and resolved rules of its calls (rules by identity, the
    rest by the rules' groups and weight transforms), so that a loop of ``explain`` calls reuses
    what the first one worked out; :func:`explainer_for` gives an explainer sharing them.

    Parameters
    ----------
    graph : Graph
        The network, e.g. from :func:`graphlrp.lower`.
    x : Tensor
        Input batch ``(B, *graph.input_shape)``, ``B >= 1``, on the graph's device and dtype,
        finite. Only read: a tensor that requires grad is used without its autograd history.
    target : int or sequence of int or Tensor
        Class to explain, one for all samples or one per sample; relevance starts as that class's
        output value (the logit), zero elsewhere.
    rule : Rule, optional
        One rule for every level (default ``Epsilon()`` when no composite is given).
    composite : Composite, optional
        A rule per level; give ``rule`` or ``composite``, not both.
    output_relevance : Tensor, optional
        Initial relevance of the output's shape, instead of ``target``.
    deterministic : bool
        Whether to run in :func:`graphlrp.deterministic` mode (bit for bit the same relevance on
        every run, also on CUDA; see ``docs/performance.md`` for its cost).

    Returns
    -------
    Explanation
        Its relevance is finite: what would leave the range of the graph's dtype is refused.

    Raises
    ------
    ArgumentTypeError
        ``graph``, ``rule``, ``composite``, ``x`` or ``target`` of the wrong type (a composite
        given as ``rule=``, a model instead of its graph).
    InputError
        ``x`` of the wrong shape or device, empty, or holding NaN or inf; a bad ``target`` or
        ``output_relevance``.
    IndexOutOfRangeError
        A target class outside the output (the message lists the offending targets).
    NumericRangeError
        Before anything is computed: a rule whose parameters, applied to the graph's weights and
        biases, overflow its dtype (``Epsilon(1e39)`` or ``WSquare`` on a weight of ``1e30`` in
        float32). After the forward pass: an output that is inf or NaN. At the end: relevance
        that left the dtype's range (it names the level and rule).
    """
    check_arguments(graph, rule, composite)
    _check_flag("deterministic", deterministic)
    workspace = _kept_workspace(graph)
    level_rules = workspace.level_rules(
        _setting(rule, composite), lambda: (composite if composite is not None else Composite(default=rule)).rules(graph))
    with deterministic_mode() if deterministic else nullcontext():
        return _explain(graph, workspace, level_rules, x, target, output_relevance)


def _explain(graph: Graph, workspace: Workspace, level_rules: Sequence[Rule | None], x: Tensor,
             target: object, output_relevance: Tensor | None, skipped: frozenset[int] = frozenset()) -> Explanation:
    """LRP of ``graph`` for the batch ``x`` with ``level_rules``, keeping what it can in ``workspace``;
    the relevance of the levels ``skipped`` is left zero (:func:`~graphlrp.propagate.redistribute_level`)."""
    workspace.check_range(graph, level_rules)
    trace = run_forward(graph, workspace, x, level_rules, check_finite=False)
    targets = _check_request(trace.output, target, output_relevance)
    if output_relevance is not None:
        output_relevance = output_relevance.detach()
    node_relevance = _relevance_storage(graph, trace.output, len(x))
    _seed_relevance(graph, trace.output, targets, output_relevance, node_relevance)
    views = [node_relevance[:, l.offset : l.offset + l.size] for l in graph.levels]
    records: list[LevelRecord | None] = [None] * len(graph.levels)
    for level in reversed(graph.levels[1:]):
        records[level.index] = redistribute_level(graph, workspace, level, level_rules[level.index], trace, views,
                                                  skipped)
    trace.release()
    _check_finite(graph, x, trace.output, node_relevance, level_rules)
    _own_copy_of_input(trace, x)
    return Explanation(graph, trace, node_relevance, records)


def _check_flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r}")


def _own_copy_of_input(trace: Trace, x: Tensor) -> None:
    """Replace what the trace shares with the caller's ``x`` (the input level's activation is a view
    of it) by a copy: the explanation's later results (edge relevance) then do not follow changes
    the caller makes to ``x``."""
    storage = x.untyped_storage().data_ptr()
    for position, activation in enumerate(trace.activations):
        if activation.untyped_storage().data_ptr() == storage:
            trace.activations[position] = activation.clone()
    if trace.output.untyped_storage().data_ptr() == storage:
        trace.output = trace.output.clone()


def check_arguments(graph: object, rule: object, composite: object) -> None:
    """Raise :class:`~graphlrp.errors.ArgumentTypeError` for a graph, rule or composite of the wrong kind."""
    if not isinstance(graph, Graph):
        hint = "; lower the model first: graph = graphlrp.lower(model, x)" if isinstance(graph, torch.nn.Module) else ""
        raise ArgumentTypeError(f"graph must be a graphlrp.Graph (from graphlrp.lower or Graph.from_edges), "
                                f"got {type(graph).__name__}{hint}")
    if isinstance(rule, Composite):
        raise ArgumentTypeError(f"rule= takes one rule for every level, got the composite {rule!r}; "
                                "pass a composite as composite=, e.g. explain(graph, x, target, composite=graphlrp.composites.EpsilonPlus())")
    if rule is not None and not isinstance(rule, Rule):
        raise ArgumentTypeError(f"rule must be a graphlrp rule (graphlrp.rules), got {rule!r}")
    if isinstance(composite, Rule):
        raise ArgumentTypeError(f"composite= takes a Composite, got the rule {composite!r}; pass one rule as rule=")
    if composite is not None and not isinstance(composite, Composite):
        raise ArgumentTypeError(f"composite must be a graphlrp Composite (graphlrp.composites), got {composite!r}")
    if rule is not None and composite is not None:
        raise InputError("give rule= or composite=, not both")


def _nonfinite_samples(values: Tensor) -> list[int] | None:
    """The first samples (rows) of ``values (B, …)`` holding NaN or inf, ``None`` if all are finite.

    One sum decides in the common case: a finite sum has only finite terms. It runs over the
    tensor in its stored order (a node-major tensor's transpose), many times faster than across it.
    """
    stored = values.T if is_node_major(values) else values
    if math.isfinite(stored.sum().item()):
        return None
    finite = torch.isfinite(values.reshape(len(values), -1)).all(dim=1)
    return None if bool(finite.all()) else torch.nonzero(~finite).flatten()[:5].tolist()


def _stored_sum(values: Tensor) -> Tensor:
    """The sum of ``values`` over its stored order (a node-major tensor's transpose), many times
    faster than across it."""
    return (values.T if is_node_major(values) else values).sum()


def _check_finite(graph: Graph, x: Tensor, output: Tensor, node_relevance: Tensor,
                  level_rules: Sequence[Rule | None]) -> None:
    """Raise the error of the first of the input, the output and the relevance to hold NaN or inf.

    One read of the device in the common case: a finite sum of the three sums has only finite terms.
    """
    if math.isfinite((_stored_sum(x) + _stored_sum(output) + _stored_sum(node_relevance)).item()):
        return
    check_finite_input(x)
    _check_finite_output(output)
    _check_finite_relevance(graph, node_relevance, level_rules)


def _check_finite_output(output: Tensor) -> None:
    """Raise :class:`~graphlrp.errors.NumericRangeError` if the forward pass overflowed."""
    bad = _nonfinite_samples(output)
    if bad is not None:
        raise NumericRangeError(
            f"the network's output is inf or NaN for samples {bad}: the forward pass leaves the range of "
            f"{output.dtype} on this input; scale the input down or use graph.to(dtype=torch.float64)"
        )


def _check_finite_relevance(graph: Graph, node_relevance: Tensor, level_rules: Sequence[Rule | None]) -> None:
    """Raise :class:`~graphlrp.errors.NumericRangeError` naming the highest level whose relevance
    left the range of the graph's dtype, and the rule of the level above it."""
    if _nonfinite_samples(node_relevance) is None:
        return
    for level in reversed(graph.levels):
        bad = _nonfinite_samples(node_relevance[:, level.offset : level.offset + level.size])
        if bad is not None:
            rules = sorted({level_rules[b.dst].label() for b in graph.blocks if b.src == level.index})
            raise NumericRangeError(
                f"relevance of level {level.index} ({level.name!r}) is inf or NaN for samples {bad}: it leaves "
                f"the range of {graph.dtype} under {', '.join(rules) or 'the initial relevance'}; "
                "use a larger epsilon or parameters of smaller magnitude, or graph.to(dtype=torch.float64)"
            )


def _check_request(output: Tensor, target, output_relevance: Tensor | None) -> Tensor | None:
    """The target class of every sample as a ``(B, 1)`` index (``None`` with ``output_relevance``),
    after checking what was asked for."""
    batch = len(output)
    if (target is None) == (output_relevance is None):
        raise InputError("give exactly one of target= (class index per sample) and output_relevance=")
    if output_relevance is not None:
        if not isinstance(output_relevance, Tensor):
            raise ArgumentTypeError(f"output_relevance must be a torch.Tensor, got {type(output_relevance).__name__}")
        if tuple(output_relevance.shape) != tuple(output.shape):
            raise InputError(f"output_relevance has shape {tuple(output_relevance.shape)}, expected the "
                             f"output's {tuple(output.shape)}")
        if not bool(torch.isfinite(output_relevance).all()):
            raise InputError("output_relevance contains NaN or inf")
        return None
    try:  # checked where the targets are: ints and host tensors go to the device once checked
        targets = torch.as_tensor(target, device=target.device if isinstance(target, Tensor) else "cpu")
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"target must be an int, a sequence of ints or an integer tensor, got {target!r}") from None
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ArgumentTypeError(f"target must be integer class indices, got dtype {targets.dtype}")
    targets = targets.long().reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch)
    if targets.numel() != batch:
        raise InputError(f"target has {targets.numel()} entries for a batch of {batch}; give one, or one per sample")
    classes = output[0].numel()
    if batch <= 1024:  # one transfer for a small batch ...
        values = targets.tolist()
        low, high = (min(values), max(values)) if values else (0, 0)
    else:  # ... two reductions for a large one
        low, high = int(targets.min()), int(targets.max())
    if batch and not 0 <= low <= high < classes:
        bad = targets[(targets < 0) | (targets >= classes)][:5].tolist()
        raise IndexOutOfRangeError(f"target {bad} out of range: the output has {classes} classes (0..{classes - 1})")
    return targets[:, None].to(output.device)


def _seed_relevance(graph: Graph, output: Tensor, targets: Tensor | None, output_relevance: Tensor | None,
                    node_relevance: Tensor) -> None:
    """Put the initial relevance on the output nodes: the target logit of each sample, or
    ``output_relevance``."""
    flat = output.reshape(len(output), -1)
    if targets is not None:
        values = flat.gather(1, targets)
    if graph.outputs_are_last_level:  # written straight into the last level's nodes
        last = graph.levels[-1]
        nodes = node_relevance[:, last.offset : last.offset + last.size]
        if targets is not None:
            nodes.scatter_(1, targets, values)
        else:
            nodes.copy_(output_relevance.reshape(flat.shape))
        return
    initial = torch.zeros_like(flat).scatter_(1, targets, values) if targets is not None else output_relevance.to(
        device=flat.device, dtype=flat.dtype).reshape(flat.shape)
    node_relevance.index_add_(1, graph.outputs, initial)


def _relevance_storage(graph: Graph, like: Tensor, batch: int) -> Tensor:
    """Zeros ``(B, num_nodes)`` in the graph's layout (:mod:`graphlrp.layout`)."""
    if graph.node_major:
        return like.new_zeros((graph.num_nodes, batch)).T
    return like.new_zeros((batch, graph.num_nodes))
