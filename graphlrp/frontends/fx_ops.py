"""Tensor operations of a traced network that are not layers: products, reductions, views, identities.

* a product ``x * y`` of two computed tensors is a gate (:meth:`GraphBuilder.gate`); which operand
  is the gate is given by ``gates={node name: operand position}`` or chosen by default: the
  operand computed by a sigmoid or hard sigmoid (a squeeze-and-excitation gate), else the one that
  is broadcast (fewer elements), else the second. A product by (or a division by) a constant is a
  scale (:meth:`GraphBuilder.scale`);
* ``mean`` and ``sum`` over per-sample dimensions are sums with weights ``1 / n`` or 1
  (:meth:`GraphBuilder.reduce`);
* ``chunk``, ``split``, ``unbind``, ``narrow``, ``select``, ``swapaxes``, ``movedim`` and
  indexing ``x[...]`` pick and arrange nodes (:meth:`GraphBuilder.renumber`): no nodes, no edges;
* dropout and torchvision's ``stochastic_depth`` are the identity in eval mode (refused in
  training mode).

Every function here lowers one node for the walker of :mod:`graphlrp.frontends.fx`.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, UnsupportedModuleError
from .builder import Value

#: the ``torch.fx`` walker of :mod:`graphlrp.frontends.fx` that calls these lowerings (its
#: ``builder``, ``values`` and ``shape``; not imported, as it imports this module)
Walker = Any


class NotATensor:
    """A traced value that is not a tensor (a size, a shape entry); only used through shapes."""


@dataclass(frozen=True)
class BatchMoved:
    """A computed tensor whose batch dimension a transpose or permute moved to position ``dim`` > 0
    (the ``(T, B, E)`` layout of ``nn.MultiheadAttention(batch_first=False)``).

    ``value`` is the same tensor with the batch in front (its per-sample dimensions in their order),
    so moving the batch is a renumbering only. Such a tensor may be given to a
    ``MultiheadAttention`` with ``batch_first=False`` or have its batch moved back to dimension 0.
    """

    value: Value
    dim: int


def refuse_batch_moved(node: torch.fx.Node, moved: BatchMoved) -> None:
    """Refuse ``node``, which reads a tensor whose batch dimension is not in front."""
    raise UnsupportedModuleError(f"{where(node)} reads a tensor whose batch is dimension {moved.dim} (moved by a "
                                 "transpose or permute); such a tensor can only be the input of an "
                                 "nn.MultiheadAttention with batch_first=False or have its batch moved back to "
                                 "dimension 0")


def where(node: torch.fx.Node) -> str:
    """The node's name and code, for error messages."""
    return f"node {node.name!r} ({node.format_node()})"


def _value_of(walker: Walker, argument: Any) -> Any:
    return walker.values.get(argument, argument) if isinstance(argument, torch.fx.Node) else argument


# -- products -------------------------------------------------------------------------------------
def _product(walker: Walker, node: torch.fx.Node, divide: bool) -> Value:
    if node.kwargs:
        raise UnsupportedModuleError(f"a product or division with options is not supported ({where(node)})")
    operands = [_value_of(walker, a) for a in node.args]
    if len(operands) != 2 or any(isinstance(o, NotATensor) for o in operands):
        raise UnsupportedModuleError(f"cannot multiply by a value that is not a tensor or number at {where(node)}")
    computed = [isinstance(o, Value) for o in operands]
    if all(computed):
        if divide:
            raise UnsupportedModuleError(f"division by a computed tensor is not supported ({where(node)})")
        gate = _gate_operand(walker, node, operands)
        return walker.builder.gate(node.name, operands[1 - gate], operands[gate])
    if not computed[0] and (divide or not computed[1]):
        raise UnsupportedModuleError(f"{where(node)} divides by or multiplies no tensor computed from the input")
    value, factor = (operands[0], operands[1]) if computed[0] else (operands[1], operands[0])
    factor = torch.as_tensor(factor, dtype=walker.builder.dtype)
    if divide and bool((factor == 0).any()):
        raise UnsupportedModuleError(f"division by zero at {where(node)}")
    return walker.builder.scale(node.name, value, 1.0 / factor if divide else factor)


def _gate_operand(walker: Walker, node: torch.fx.Node, operands: list[Value]) -> int:
    """Which operand of a product of two computed tensors is the gate (see the module docstring)."""
    if node.name in walker.gates:
        walker.gates_used.add(node.name)
        return walker.gates[node.name]
    sigmoid = [walker.builder.through_sigmoid(o) for o in operands]
    if sigmoid.count(True) == 1:
        return sigmoid.index(True)
    sizes = [o.size for o in operands]
    if sizes[0] != sizes[1]:
        return sizes.index(min(sizes))
    return 1


def _multiply(walker: Walker, node: torch.fx.Node) -> Value:
    return _product(walker, node, divide=False)


def _divide(walker: Walker, node: torch.fx.Node) -> Value:
    return _product(walker, node, divide=True)


# -- reductions -----------------------------------------------------------------------------------
def _reduction(mean: bool) -> Callable[[Walker, torch.fx.Node], Value]:
    def lower_reduction(walker: Walker, node: torch.fx.Node) -> Value:
        kwargs = walker._kwargs(node, ("input", "dim", "keepdim"))
        if set(kwargs) - {"input", "dim", "keepdim"} or kwargs.get("dim") is None:
            raise UnsupportedModuleError(f"{'mean' if mean else 'sum'} needs the dimensions to reduce and no other "
                                         f"options ({where(node)})")
        value = walker._tensor_arg(node, 0)
        dims = kwargs["dim"]
        rank = len(value.shape) + 1
        dims = tuple(sorted({d % rank for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}))
        if 0 in dims:
            raise UnsupportedModuleError(f"reducing over the batch dimension is not supported ({where(node)})")
        return walker.builder.reduce(node.name, value, tuple(d - 1 for d in dims), bool(kwargs.get("keepdim", False)),
                                     mean)

    return lower_reduction


# -- views and indexing -------------------------------------------------------------------------
def _renumbering(walker: Walker, node: torch.fx.Node) -> Any:
    """A view or indexing: applied to a batch of node ids (the picked nodes keep their activations)."""
    source = _value_of(walker, node.args[0]) if node.args else None
    if node.target is operator.getitem and isinstance(source, tuple):
        return source[node.args[1]]
    if isinstance(source, BatchMoved):
        refuse_batch_moved(node, source)
    if isinstance(source, NotATensor) or (node.target is operator.getitem and not isinstance(source, Value)):
        return NotATensor()
    if not isinstance(source, Value):
        raise UnsupportedModuleError(f"argument 0 of {where(node)} must be a tensor computed from the input")
    arguments = [_value_of(walker, a) for a in node.args[1:]]
    kwargs = {k: _value_of(walker, v) for k, v in node.kwargs.items()}
    if any(isinstance(a, (Value, NotATensor, tuple)) for a in _flat((arguments, kwargs))):
        raise UnsupportedModuleError(f"the indices of {where(node)} must be constants, not computed")
    if node.op == "call_method":
        def view(ids: Tensor) -> object:
            return getattr(ids, node.target)(*arguments, **kwargs)
    else:
        def view(ids: Tensor) -> object:
            return node.target(ids, *arguments, **kwargs)
    return walker.builder.renumber(source, view, where(node))


def _flat(structure: Any) -> list[Any]:
    if isinstance(structure, dict):
        structure = list(structure.values())
    if isinstance(structure, (list, tuple)) and not isinstance(structure, torch.Size):
        return [leaf for item in structure for leaf in _flat(item)]
    if isinstance(structure, slice):
        return _flat([structure.start, structure.stop, structure.step])
    return [structure]


# -- identities in eval mode ----------------------------------------------------------------------
def _dropout(walker: Walker, node: torch.fx.Node) -> Value:
    if walker._kwargs(node, ("input", "p", "training", "inplace")).get("training", True):
        raise InputError(f"dropout in training mode at {where(node)}; pass training=False or use nn.Dropout")
    return walker._tensor_arg(node, 0)


def _stochastic_depth(walker: Walker, node: torch.fx.Node) -> Value:
    if walker._kwargs(node, ("input", "p", "mode", "training")).get("training", True):
        raise InputError(f"stochastic depth in training mode at {where(node)}; call model.eval() first")
    return walker._tensor_arg(node, 0)


def is_stochastic_depth(target: Any) -> bool:
    """Whether ``target`` is torchvision's ``stochastic_depth`` (torchvision is not imported for it)."""
    return getattr(target, "__module__", None) == "torchvision.ops.stochastic_depth" and getattr(
        target, "__name__", None) == "stochastic_depth"


DROPOUT_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
#: tensor methods that pick or arrange nodes
VIEW_METHODS = frozenset({"chunk", "split", "unbind", "narrow", "select", "swapaxes", "movedim"})
#: functions that pick or arrange nodes
VIEW_FUNCTIONS = frozenset({operator.getitem, torch.chunk, torch.split, torch.unbind, torch.narrow, torch.select,
                            torch.swapaxes, torch.movedim})

#: the lowering of each tensor method handled here
METHODS: dict[str, Callable[[Walker, torch.fx.Node], Any]] = {
    "mul": _multiply, "mul_": _multiply, "div": _divide, "div_": _divide,
    "mean": _reduction(True), "sum": _reduction(False),
    **{name: _renumbering for name in VIEW_METHODS},
}
#: the lowering of each function handled here
FUNCTIONS: dict[Any, Callable[[Walker, torch.fx.Node], Any]] = {
    operator.mul: _multiply, operator.imul: _multiply, torch.mul: _multiply,
    operator.truediv: _divide, operator.itruediv: _divide, torch.div: _divide,
    torch.mean: _reduction(True), torch.sum: _reduction(False),
    **{fn: _dropout for fn in DROPOUT_FUNCTIONS},
    **{fn: _renumbering for fn in VIEW_FUNCTIONS},
}


def function_lowering(target: Any) -> Callable[[Walker, torch.fx.Node], Any] | None:
    """The lowering of a traced function call handled here, or ``None``."""
    if is_stochastic_depth(target):
        return _stochastic_depth
    try:
        return FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None
