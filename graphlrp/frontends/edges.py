"""Any directed acyclic network given as edge lists, lowered to a :class:`~graphlrp.Graph`.

The nodes are grouped into levels by depth: a node's depth is the length of the longest path to
it from an input (inputs have depth 0). Nodes of one depth never connect to each other, so every
edge goes from an earlier level to a later one, skip edges included. Depth is computed by Kahn's
algorithm with one vectorized round per depth: the cost is proportional to the number of edges,
with a Python loop only over depths.
"""
from __future__ import annotations

import math
import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..activations import IDENTITY, Activation, activation_by_name
from ..errors import (
    ArgumentTypeError,
    CycleError,
    GraphTooLargeError,
    InputError,
    NumericRangeError,
)
from ..memory import check_budget
from ..blocks import KINDS, Block, DenseBlock, general_kinds
from ..graph import Graph, Level

ArrayLike = Union[Tensor, np.ndarray, Sequence[float]]
ActivationSpec = Union[str, Activation]
Labeller = Callable[[int], Hashable]

#: offending edges or nodes listed in an error message
LISTED_IN_ERRORS = 5

#: most nodes a graph may have: the key ``src · N + dst`` of every edge must fit in int64
MAX_NODES = math.isqrt(2**63 - 1)

#: peak bytes per node while a graph is built (measured: 97 with two edges), for the memory budget
BYTES_PER_NODE = 128


@dataclass(frozen=True)
class _Network:
    """The checked arguments: ``n`` nodes, edge lists, per-node bias and activation codes."""

    n: int
    src: Tensor
    dst: Tensor
    weight: Tensor
    bias: Tensor | None
    activations: list[Activation]  # the distinct activations
    codes: Tensor  # index into ``activations`` of every node
    inputs: Tensor
    outputs: Tensor | None
    label: Labeller  # names node ``i`` in error messages
    names: list[Hashable] | None  # the caller's names, checked distinct


@dataclass(frozen=True)
class _Layout:
    """Where every node goes: its level and its id in the graph."""

    order: Tensor  # caller's id of every graph node, in graph id order
    new_id: Tensor  # graph id of every caller's node
    sizes: list[int]  # nodes per level
    depths: list[int]  # depth of every level
    activations: list[Activation]  # activation of every level


def graph_from_edges(
    src: ArrayLike,
    dst: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    activation: ActivationSpec | Sequence[ActivationSpec] = "identity",
    *,
    inputs: ArrayLike | None = None,
    outputs: ArrayLike | None = None,
    block_kind: str = "sparse",
    names: Sequence[Hashable] | None = None,
    dtype: torch.dtype | None = None,
) -> Graph:
    """Build a :class:`~graphlrp.Graph` from a directed acyclic network given as edge lists.

    Node ``j`` computes ``a_j = activation_j(Σ_i w_ij a_i + b_j)`` over its incoming edges ``i → j``;
    input nodes hold the input values. ``graph(x)`` maps ``x`` of shape ``(B, len(inputs))`` to
    ``(B, len(outputs))``, both in the order given.

    The arguments are read, never modified; the graph holds its own copies of them.

    Parameters
    ----------
    src, dst, weight : Tensor or ndarray or sequence
        One entry per edge ``src[e] → dst[e]`` with weight ``weight[e]``, over node ids
        ``0 .. N-1``. Duplicate edges are summed into one. A weight of zero is no edge (as
        everywhere in graphlrp) but still orders its nodes. Every id ``0 .. N-1`` is a node, so
        ids should be compact: ``numpy.unique(ids, return_inverse=True)`` relabels sparse ones.
    bias : Tensor or ndarray or sequence, optional
        One bias per node (default: none). Input nodes must have bias 0.
    activation : str or Activation or sequence of them
        A name from :data:`graphlrp.activations.ACTIVATIONS` (or an :class:`Activation`) for
        every non-input node, or one per node (inputs must then have ``'identity'``).
    inputs : Tensor or ndarray or sequence, optional
        Ids of the input nodes in the order of the input's last dimension (default: the nodes
        without incoming edges, ascending). No edge may end at an input. Non-input nodes without
        incoming edges are constant nodes ``a = activation(b)`` at depth 1.
    outputs : Tensor or ndarray or sequence, optional
        Ids of the output nodes in the order of the output's last dimension (default: the
        non-input nodes without outgoing edges, ascending). Any node may be an output.
    block_kind : {'sparse', 'edges', 'dense'}
        How each block of edges is held (:class:`SparseBlock`, :class:`EdgeListBlock`,
        :class:`DenseBlock`).
    names : sequence of hashable, optional
        A distinct name per node, used in error messages and kept as ``graph.node_names``.
    dtype : torch.dtype, optional
        Floating dtype of weights and biases (default: ``weight``'s if floating, else torch's
        default dtype).

    Returns
    -------
    Graph
        Level 0 holds the inputs in the given order; every later level holds the nodes of one
        depth and one activation (named ``'depth d'``, layer type ``'node'``), in ascending id.
        ``graph.original_ids[g]`` is the caller's id of graph node ``g``; ``graph.node_names``
        is ``names`` in graph node order (``None`` without names).

    Raises
    ------
    ArgumentTypeError
        (a ``TypeError``) for an argument of the wrong type: ``None`` or text for an edge list,
        ids that are not integers, weights that are not real numbers, a ``dtype`` that is not a
        ``torch.dtype``, an activation that is neither a name nor an :class:`Activation`.
    InputError
        (a ``ValueError``) for an edge into an input, negative or out-of-range ids, lengths that
        disagree, NaN or inf in weights or biases, an unknown activation or block kind, repeated
        names, or inputs with a bias or activation.
    NumericRangeError
        (an ``OverflowError``) for a weight or bias that is finite as given but overflows
        ``dtype``.
    CycleError
        (a ``ValueError``) if the edges contain a cycle; it names one.
    GraphTooLargeError
        (a ``MemoryError``) if the largest node id asks for more nodes than graphlrp can index,
        or than fit in the memory budget (half the available memory); it names the id.
    """
    if block_kind not in general_kinds():
        raise InputError(f"unknown block_kind {block_kind!r}; choose one of {general_kinds()}")
    network = _checked_network(src, dst, weight, bias, activation, inputs, outputs, names, dtype)
    depth = longest_path_depths(network.src, network.dst, network.n, network.inputs, network.label)
    outputs_t = _default_outputs(network) if network.outputs is None else network.outputs
    src_t, dst_t, weight_t = merge_duplicate_edges(network.src, network.dst, network.weight, network.n)
    nonzero = weight_t != 0
    layout = _layout(depth, network.codes, network.activations, network.inputs)
    blocks = _blocks(layout, block_kind, src_t[nonzero], dst_t[nonzero], weight_t[nonzero])
    graph = Graph(_levels(layout, network.bias), blocks, outputs=layout.new_id[outputs_t])
    graph.original_ids = layout.order
    graph.node_names = None if network.names is None else [network.names[i] for i in layout.order.tolist()]
    return graph


Graph.from_edges = staticmethod(graph_from_edges)


# -- checking and converting the arguments --------------------------------------------------------
def _checked_network(
    src: ArrayLike,
    dst: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None,
    activation: ActivationSpec | Sequence[ActivationSpec],
    inputs: ArrayLike | None,
    outputs: ArrayLike | None,
    names: Sequence[Hashable] | None,
    dtype: torch.dtype | None,
) -> _Network:
    """The arguments as tensors on ``weight``'s device, checked (outputs ``None`` when not given)."""
    weight_t = _as_values("weight", weight, checked_dtype(dtype))
    device = weight_t.device
    src_t, dst_t = _as_ids("src", src, device), _as_ids("dst", dst, device)
    if not len(src_t) == len(dst_t) == len(weight_t):
        raise InputError(f"src, dst and weight must have one entry per edge, got lengths "
                         f"{len(src_t)}, {len(dst_t)} and {len(weight_t)}")
    inputs_t = None if inputs is None else _as_ids("inputs", inputs, device)
    outputs_t = None if outputs is None else _checked_outputs(_as_ids("outputs", outputs, device))
    bias_t = None if bias is None else _as_values("bias", bias, weight_t.dtype).to(device)
    specs = _activation_specs(activation)
    names_list = _checked_names(names)
    declared = {
        "len(bias)": None if bias_t is None else len(bias_t),
        "len(activation)": None if isinstance(specs, Activation) else len(specs),
        "len(names)": None if names_list is None else len(names_list),
    }
    n = _count_nodes({"src": src_t, "dst": dst_t, "inputs": inputs_t, "outputs": outputs_t}, declared)
    label = _labeller(names_list)
    inputs_t = _default_inputs(dst_t, n) if inputs_t is None else _checked_inputs(inputs_t, label)
    _check_no_edges_into_inputs(src_t, dst_t, inputs_t, n, label)
    activations, codes = _resolve_activations(specs, n, device)
    single_activation = isinstance(specs, Activation)
    _check_plain_inputs(inputs_t, bias_t, activations, codes, single_activation, label)
    return _Network(
        n, src_t, dst_t, weight_t, bias_t, activations, codes, inputs_t, outputs_t, label, names_list
    )


def checked_dtype(dtype: object) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise ArgumentTypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise InputError(f"dtype must be a floating dtype (torch.float16, bfloat16, float32, float64), got {dtype}")
    return dtype


def _as_array(name: str, values: object, holding: str) -> np.ndarray:
    """``values`` (anything but a tensor) as an ndarray; refuse ``None``, text and ragged nesting."""
    if values is None or isinstance(values, (str, bytes, dict, set)):
        raise ArgumentTypeError(f"{name} must be a sequence, ndarray or Tensor of {holding}, "
                                f"got {type(values).__name__}")
    try:
        return np.asarray(values)
    except (ValueError, TypeError) as error:
        raise InputError(f"{name} must be a one-dimensional sequence of {holding}; it cannot be read as "
                         f"an array: {error}") from None


def _first_position(name: str, array: np.ndarray, bad: Callable[[object], bool]) -> int | None:
    """Position of the first entry of a one-dimensional object ``array`` for which ``bad`` holds."""
    _check_one_dimensional(name, array.shape)
    return next((i for i, value in enumerate(array.tolist()) if bad(value)), None)


def _check_one_dimensional(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {tuple(shape)}")


def _is_int_entry(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_ids(name: str, values: ArrayLike, device: torch.device) -> Tensor:
    """A 1-D int64 tensor of non-negative node ids on ``device``."""
    if isinstance(values, Tensor):
        ids = values.detach()
        if ids.numel() and (ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex()):
            raise ArgumentTypeError(f"{name} must hold integer node ids, got dtype {ids.dtype}")
    else:
        ids = torch.from_numpy(_int64_ids(name, _as_array(name, values, "integer node ids"))).to(device)
    if ids.numel() == 0:
        return ids.reshape(0).long().to(device)
    _check_one_dimensional(name, tuple(ids.shape))
    ids = ids.long().to(device)
    if bool((ids < 0).any()):
        raise InputError(f"{name} holds the negative node id {int(ids.min())}; node ids are 0 .. N-1")
    return ids


def _int64_ids(name: str, array: np.ndarray) -> np.ndarray:
    """An int64 copy of an array of integer ids; ids beyond int64 name the largest."""
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == object:
        position = _first_position(name, array, lambda v: not _is_int_entry(v))
        if position is not None:
            value = array[position]
            raise ArgumentTypeError(f"{name} must hold integer node ids, got {value!r} "
                                    f"({type(value).__name__}) at position {position}")
        largest = max(int(v) for v in array.tolist())
        if largest > np.iinfo(np.int64).max:
            _refuse_largest_id(name, largest)
        return np.array(array.tolist(), dtype=np.int64)
    if array.dtype.kind == "u" and array.max() > np.iinfo(np.int64).max:
        _refuse_largest_id(name, int(array.max()))
    if array.dtype.kind not in "iu":
        raise ArgumentTypeError(f"{name} must hold integer node ids, got dtype {array.dtype}")
    return np.array(array, dtype=np.int64)


def _as_values(name: str, values: ArrayLike, dtype: torch.dtype | None) -> Tensor:
    """A 1-D tensor of ``dtype``; without one, a tensor's or array's floating dtype, else torch's default.

    NaN or inf as given is an :class:`InputError`; a finite value that overflows ``dtype`` a
    :class:`NumericRangeError`.
    """
    if isinstance(values, Tensor):
        tensor = values.detach()
        keeps_own = tensor.is_floating_point()
    else:
        array = _as_array(name, values, "real numbers")
        keeps_own = isinstance(values, np.ndarray) and array.dtype.kind == "f"
        tensor = torch.from_numpy(_real_array(name, array))
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ArgumentTypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    _check_one_dimensional(name, tuple(tensor.shape))
    target = dtype or (tensor.dtype if keeps_own else torch.get_default_dtype())
    _check_finite(name, tensor, "NaN or inf", InputError)
    converted = tensor.to(target)
    _check_finite(name, converted, f"values beyond the range of {target} (largest "
                  f"{torch.finfo(target).max:.4g})", NumericRangeError, given=tensor)
    return converted


def _real_array(name: str, array: np.ndarray) -> np.ndarray:
    """The real numbers of ``array`` at full precision (floating kept, integers as float64)."""
    if array.dtype == object:
        array = _object_reals(name, array)
    if array.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return np.array(array, dtype=array.dtype.newbyteorder("=") if array.dtype.kind == "f" else np.float64)


def _object_reals(name: str, array: np.ndarray) -> np.ndarray:
    """A float64 array of Python numbers held as objects (e.g. integers beyond int64)."""
    position = _first_position(
        name, array, lambda v: isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number))
        or isinstance(v, (complex, np.complexfloating))
    )
    if position is not None:
        value = array[position]
        raise ArgumentTypeError(f"{name} must hold real numbers, got {value!r} ({type(value).__name__}) "
                                f"at position {position}")
    values = []
    for position, value in enumerate(array.tolist()):
        try:
            values.append(float(value))
        except OverflowError:
            raise NumericRangeError(f"{name}[{position}] = {short_repr(value)} is too large for a float") from None
    return np.asarray(values, dtype=np.float64)


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} digits)"


def checked_number(value: object, owner: str, attribute: Hashable, dtype: torch.dtype) -> float:
    """``value`` as a float that is finite in ``dtype``; errors name the edge or node that holds it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{owner} has {attribute!r} = {value!r} ({type(value).__name__}); "
                                "it must be a real number")
    try:
        number = float(value)
    except OverflowError:
        raise NumericRangeError(f"{owner} has {attribute!r} = {short_repr(value)}, too large for a float") from None
    if not math.isfinite(number):
        raise InputError(f"{owner} has {attribute!r} = {number}; it must be finite")
    largest = torch.finfo(dtype).max
    if abs(number) > largest:
        raise NumericRangeError(f"{owner} has {attribute!r} = {number:.6g}, beyond the range of {dtype} "
                                f"(largest {largest:.4g})")
    return number


def _check_finite(
    name: str, tensor: Tensor, what: str, error: type[Exception], given: Tensor | None = None
) -> None:
    if not tensor.is_floating_point():
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:LISTED_IN_ERRORS].tolist()
        shown = (tensor if given is None else given)[bad].tolist()
        raise error(f"{name} holds {what}: {shown} at positions {bad}")


def _activation_specs(
    activation: ActivationSpec | Sequence[ActivationSpec],
) -> Activation | list[ActivationSpec]:
    """One :class:`Activation` for every node, or the list of per-node names and activations."""
    if isinstance(activation, str):
        return activation_by_name(activation)
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, (bytes, dict, set)) or not hasattr(activation, "__iter__"):
        raise ArgumentTypeError(f"activation must be a name, an Activation or a sequence of them, "
                                f"got {type(activation).__name__}")
    specs = list(activation)
    for position, spec in enumerate(specs):
        if not isinstance(spec, (str, Activation)):
            raise ArgumentTypeError(f"activation[{position}] must be a name or a graphlrp Activation, got {spec!r}")
    return specs


def _checked_names(names: Sequence[Hashable] | None) -> list[Hashable] | None:
    """``names`` as a list of distinct hashable names."""
    if names is None:
        return None
    if isinstance(names, (str, bytes, dict, set)) or not hasattr(names, "__len__"):
        raise ArgumentTypeError(f"names must be a sequence with one name per node, got {type(names).__name__}")
    listed = list(names)
    try:
        counts = Counter(listed)
    except TypeError:
        raise ArgumentTypeError("names must be hashable (strings, numbers, tuples, ...)") from None
    if len(counts) < len(listed):
        repeated = [name for name, count in counts.items() if count > 1][:LISTED_IN_ERRORS]
        raise InputError(f"names must be distinct, but these name several nodes: {repeated}")
    return listed


def _refuse_largest_id(name: str, largest: int) -> None:
    raise GraphTooLargeError(
        f"{name} holds the node id {largest:,}, which makes a graph of {largest + 1:,} nodes (every id "
        f"0 .. {largest:,} is a node); graphlrp indexes at most {MAX_NODES:,}. Relabel the ids compactly, "
        "e.g. with numpy.unique(ids, return_inverse=True)"
    )


def _count_nodes(ids: dict[str, Tensor | None], declared: dict[str, int | None]) -> int:
    """``N``: the length the per-node arguments declare, else the largest id plus one."""
    lengths = {source: length for source, length in declared.items() if length is not None}
    if len(set(lengths.values())) > 1:
        given = ", ".join(f"{source} = {length}" for source, length in lengths.items())
        raise InputError(f"the per-node arguments disagree on the number of nodes: {given}")
    largest, holder = max(
        ((int(t.max()), name) for name, t in ids.items() if t is not None and t.numel()), default=(-1, "")
    )
    if lengths:
        source, n = next(iter(lengths.items()))
        if largest >= n:
            raise InputError(f"node id {largest} is out of range: {source} = {n} gives node ids 0 .. {n - 1} "
                             f"(the id is in {holder})")
    else:
        n = largest + 1
    if n == 0:
        raise InputError("the graph has no nodes")
    if n > MAX_NODES:
        _refuse_largest_id(holder, largest)
    check_budget(f"a graph of {n:,} nodes (node ids 0 .. {n - 1:,}; relabel sparse ids compactly)",
                 n * BYTES_PER_NODE, None)
    return n


def _labeller(names: Sequence[Hashable] | None) -> Labeller:
    """How error messages name node ``i``: by ``names`` when given, else by id."""
    if names is None:
        return int
    return lambda i: names[int(i)]


def _default_inputs(dst: Tensor, n: int) -> Tensor:
    has_incoming = torch.bincount(dst, minlength=n) > 0
    return torch.nonzero(~has_incoming).flatten()


def _checked_inputs(inputs: Tensor, label: Labeller) -> Tensor:
    if inputs.numel() == 0:
        raise InputError("inputs is empty; a graph needs at least one input node")
    unique, counts = torch.unique(inputs, return_counts=True)
    if bool((counts > 1).any()):
        repeated = [label(i) for i in unique[counts > 1][:LISTED_IN_ERRORS].tolist()]
        raise InputError(f"inputs lists nodes more than once: {repeated}")
    return inputs


def _default_outputs(network: _Network) -> Tensor:
    has_outgoing = torch.bincount(network.src, minlength=network.n) > 0
    is_input = _mask(network.inputs, network.n)
    outputs = torch.nonzero(~has_outgoing & ~is_input).flatten()
    if outputs.numel() == 0:
        raise InputError("no non-input node lacks outgoing edges to serve as default output; give outputs=")
    return outputs


def _checked_outputs(outputs: Tensor) -> Tensor:
    if outputs.numel() == 0:
        raise InputError("outputs is empty; a graph needs at least one output node")
    return outputs


def _mask(nodes: Tensor, n: int) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool, device=nodes.device)
    mask[nodes] = True
    return mask


def _check_no_edges_into_inputs(src: Tensor, dst: Tensor, inputs: Tensor, n: int, label: Labeller) -> None:
    into_input = _mask(inputs, n)[dst]
    if bool(into_input.any()):
        bad = torch.nonzero(into_input).flatten()[:LISTED_IN_ERRORS]
        listed = ", ".join(f"{label(s)!r} -> {label(d)!r}" for s, d in zip(src[bad].tolist(), dst[bad].tolist()))
        raise InputError(f"edges end at input nodes ({listed}); inputs take the input values and have no incoming edges")


def _resolve(spec: ActivationSpec) -> Activation:
    return spec if isinstance(spec, Activation) else activation_by_name(spec)


def _resolve_activations(
    activation: Activation | list[ActivationSpec], n: int, device: torch.device
) -> tuple[list[Activation], Tensor]:
    """The distinct activations, sorted by name, and per node the index of its activation among them."""
    if isinstance(activation, Activation):
        return [activation], torch.zeros(n, dtype=torch.long, device=device)
    spec_codes: dict[ActivationSpec, int] = {}
    per_node = [spec_codes.setdefault(spec, len(spec_codes)) for spec in activation]
    distinct: dict[Activation, int] = {}
    spec_to_code = [distinct.setdefault(_resolve(spec), len(distinct)) for spec in spec_codes]
    found = list(distinct)
    by_name = sorted(range(len(found)), key=lambda k: found[k].name)  # level order independent of node order
    rank = torch.empty(len(found), dtype=torch.long)
    rank[by_name] = torch.arange(len(found))
    codes = rank[spec_to_code][per_node].to(device)
    return [found[k] for k in by_name], codes


def _check_plain_inputs(
    inputs: Tensor, bias: Tensor | None, activations: list[Activation], codes: Tensor, single: bool, label: Labeller
) -> None:
    """Inputs hold the input values: no bias, and the identity when activations are given per node."""
    if bias is not None and bool((bias[inputs] != 0).any()):
        bad = inputs[bias[inputs] != 0][:LISTED_IN_ERRORS].tolist()
        raise InputError(f"input nodes {[label(i) for i in bad]} have a nonzero bias; inputs take the input values")
    if single:
        return
    plain = torch.tensor([a.name == "identity" for a in activations], device=codes.device)
    not_plain = ~plain[codes[inputs]]
    if bool(not_plain.any()):
        bad = inputs[not_plain][:LISTED_IN_ERRORS].tolist()
        found = [f"{label(i)!r}: {activations[int(codes[i])].name}" for i in bad]
        raise InputError(f"input nodes must have activation 'identity' (they take the input values), got {found}")


# -- depth ----------------------------------------------------------------------------------------
def longest_path_depths(src: Tensor, dst: Tensor, n: int, inputs: Tensor, label: Labeller = int) -> Tensor:
    """Depth of every node: 0 for ``inputs``, 1 for other nodes without incoming edges, else one
    more than the largest depth among the node's predecessors.

    Kahn's algorithm, one vectorized round per depth.

    Parameters
    ----------
    src, dst : Tensor
        Edge lists (int64) over node ids ``0 .. n-1``.
    n : int
        Number of nodes.
    inputs : Tensor
        Ids of the input nodes (none of them has an incoming edge).
    label : callable
        Names node ``i`` in the :class:`CycleError` message.

    Returns
    -------
    Tensor
        ``(n,)`` int64 depths.

    Raises
    ------
    CycleError
        If the edges contain a cycle.
    """
    in_degree = torch.bincount(dst, minlength=n)
    out_degree = torch.bincount(src, minlength=n)
    targets_by_source = dst[torch.argsort(src, stable=True)]
    first_edge = torch.cumsum(out_degree, 0) - out_degree
    depth = (in_degree == 0).long()
    depth[inputs] = 0
    remaining = in_degree.clone()
    frontier = torch.nonzero(in_degree == 0).flatten()
    finished = 0
    while frontier.numel():
        finished += frontier.numel()
        counts = out_degree[frontier]
        targets = targets_by_source[_ranges(first_edge[frontier], counts)]
        depth.scatter_reduce_(0, targets, torch.repeat_interleave(depth[frontier] + 1, counts), reduce="amax")
        remaining.index_add_(0, targets, torch.full_like(targets, -1))
        touched = torch.unique(targets)
        frontier = touched[remaining[touched] == 0]
    if finished < n:
        raise CycleError([label(i) for i in _find_cycle(src, dst, remaining > 0)])
    return depth


def _ranges(starts: Tensor, counts: Tensor) -> Tensor:
    """Concatenation of ``arange(start, start + count)`` for every pair."""
    total = int(counts.sum())
    shifts = starts - (torch.cumsum(counts, 0) - counts)
    return torch.arange(total, device=starts.device) + torch.repeat_interleave(shifts, counts, output_size=total)


def _find_cycle(src: Tensor, dst: Tensor, stuck: Tensor) -> list[int]:
    """A cycle among the ``stuck`` nodes (those Kahn's algorithm never reached).

    Every stuck node has a stuck predecessor, so walking back along predecessors must revisit a
    node; the walk from that node on, reversed, is a cycle.
    """
    inside = stuck[src] & stuck[dst]
    predecessor = torch.full((len(stuck),), -1, dtype=torch.long, device=src.device)
    predecessor[dst[inside]] = src[inside]
    predecessor_of = predecessor.cpu().numpy()
    node = int(torch.nonzero(stuck)[0])
    position: dict[int, int] = {}
    walk: list[int] = []
    while node not in position:
        position[node] = len(walk)
        walk.append(node)
        node = int(predecessor_of[node])
    return walk[position[node]:][::-1]


def merge_duplicate_edges(src: Tensor, dst: Tensor, weight: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sum the weights of repeated ``(src, dst)`` pairs into one edge (edges come back sorted)."""
    key = src * n + dst
    unique, inverse = torch.unique(key, return_inverse=True)
    if len(unique) == len(key):
        return src, dst, weight
    merged = weight.new_zeros(len(unique)).index_add_(0, inverse, weight)
    return unique // n, unique % n, merged


# -- levels and blocks ----------------------------------------------------------------------------
def _layout(depth: Tensor, codes: Tensor, activations: list[Activation], inputs: Tensor) -> _Layout:
    """Inputs first, in their order; then the other nodes by (depth, activation), ascending id within."""
    n = len(depth)
    rest = torch.nonzero(~_mask(inputs, n)).flatten()
    key = depth[rest] * len(activations) + codes[rest]
    by_key = torch.argsort(key, stable=True)
    keys, counts = torch.unique_consecutive(key[by_key], return_counts=True)
    order = torch.cat([inputs, rest[by_key]])
    new_id = torch.empty_like(order)
    new_id[order] = torch.arange(n, device=order.device)
    return _Layout(
        order=order,
        new_id=new_id,
        sizes=[len(inputs), *counts.tolist()],
        depths=[0, *(keys // len(activations)).tolist()],
        activations=[IDENTITY, *(activations[k] for k in (keys % len(activations)).tolist())],
    )


def _levels(layout: _Layout, bias: Tensor | None) -> list[Level]:
    ordered_bias = None if bias is None else bias[layout.order]
    levels = [Level(0, "input", "input", (layout.sizes[0],), 0)]
    levels_per_depth = Counter(layout.depths)
    offset = layout.sizes[0]
    for index in range(1, len(layout.sizes)):
        size, depth, activation = layout.sizes[index], layout.depths[index], layout.activations[index]
        name = f"depth {depth} ({activation.name})" if levels_per_depth[depth] > 1 else f"depth {depth}"
        level_bias = None if ordered_bias is None else ordered_bias[offset : offset + size].clone()
        levels.append(Level(index, name, "node", (size,), offset, bias=level_bias, activation=activation))
        offset += size
    return levels


def _blocks(layout: _Layout, kind: str, src: Tensor, dst: Tensor, weight: Tensor) -> list[Block]:
    """One block per (source level, destination level) pair that has edges."""
    sizes = torch.tensor(layout.sizes, device=src.device)
    n_levels = len(layout.sizes)
    level_of = torch.repeat_interleave(torch.arange(n_levels, device=src.device), sizes)
    offsets = (torch.cumsum(sizes, 0) - sizes).tolist()
    global_src, global_dst = layout.new_id[src], layout.new_id[dst]
    pair = level_of[global_src] * n_levels + level_of[global_dst]
    by_pair = torch.argsort(pair, stable=True)
    pairs, counts = torch.unique_consecutive(pair[by_pair], return_counts=True)
    if KINDS[kind] is DenseBlock:
        _check_dense_budget(layout, [divmod(key, n_levels) for key in pairs.tolist()], weight.element_size())
    blocks = []
    for key, part in zip(pairs.tolist(), torch.split(by_pair, counts.tolist())):
        a, b = divmod(key, n_levels)
        local_src, local_dst = global_src[part] - offsets[a], global_dst[part] - offsets[b]
        blocks.append(_block(kind, a, b, layout.sizes[a], layout.sizes[b], local_src, local_dst, weight[part]))
    return blocks


def _check_dense_budget(layout: _Layout, pairs: list[tuple[int, int]], element_size: int) -> None:
    """Refuse dense blocks whose matrices (one entry per pair of nodes) exceed the memory budget."""
    entries = sum(layout.sizes[a] * layout.sizes[b] for a, b in pairs)
    check_budget(f"dense blocks of {entries:,} entries in all (block_kind='sparse' holds only the edges)",
                 entries * element_size, None)


def _block(kind: str, a: int, b: int, n_src: int, n_dst: int, src: Tensor, dst: Tensor, weight: Tensor) -> Block:
    return KINDS[kind].from_edge_list(a, b, n_src, n_dst, src, dst, weight)
