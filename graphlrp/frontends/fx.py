"""Lowering any ``torch.fx``-traceable network: residual additions, concatenations, functional calls.

The model is traced symbolically, shapes are propagated with one sample of the example input (a
copy), and every node of the traced graph becomes graph operations on the :class:`GraphBuilder`.

In-place operations (``nn.ReLU(inplace=True)``, ``F.relu(x, inplace=True)``, ``x.relu_()``,
``torch.relu_(x)``, ``x.add_(y)``) are lowered as what they compute: the graph applies the
out-of-place function, and every later use of the changed tensor reads the result. An in-place
operation on a tensor that is also read later through another name (a view taken before the
change), or on a parameter or buffer of the model, is refused before the model runs.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..activations import Activation
from ..errors import InputError, UnsupportedModuleError
from .attention import module_lowering, scaled_dot_product_attention
from .builder import GraphBuilder, Value
from .fx_ops import DROPOUT_FUNCTIONS, METHODS, NotATensor as _NotATensor, VIEW_FUNCTIONS, VIEW_METHODS
from .fx_ops import BatchMoved, function_lowering, is_stochastic_depth, refuse_batch_moved, where as _where
from .modules import PASSTHROUGH_TYPES, RESHAPE_TYPES, handler_for, normalized_features, unsupported

_ACTIVATION_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu",
    F.selu: "selu", F.celu: "celu", F.gelu: "gelu", F.silu: "silu", F.mish: "mish", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.softplus: "softplus", F.hardtanh: "hardtanh",
    F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.softsign: "softsign", F.logsigmoid: "logsigmoid",
}
#: in-place activation functions and the out-of-place function the graph applies instead
_INPLACE_FUNCTIONS: dict[Any, Callable[..., Tensor]] = {
    torch.relu_: torch.relu, F.leaky_relu_: F.leaky_relu, F.elu_: F.elu, F.hardtanh_: F.hardtanh,
    torch.celu_: F.celu, torch.selu_: F.selu, torch.sigmoid_: torch.sigmoid, torch.tanh_: torch.tanh,
}
_ACTIVATION_METHODS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_PERMUTE_METHODS = {"permute", "transpose"}
_PERMUTE_FUNCTIONS = {torch.permute, torch.transpose}
_ADD = {operator.add, torch.add, operator.iadd}
_INPLACE_OPERATORS = {operator.iadd, operator.imul, operator.itruediv}
#: functions that return their argument's values unchanged (a copy, or the tensor itself)
_IDENTITY_FUNCTIONS = {torch.clone, torch.detach, torch.Tensor.contiguous}


@dataclass(frozen=True)
class _Bound:
    """``fn(z, *args, **kwargs)``: a functional activation with its extra arguments."""

    fn: Callable[..., Tensor]
    args: tuple
    kwargs: tuple

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z, *self.args, **dict(self.kwargs))


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # torch.fx raises many kinds of errors on untraceable code
        raise UnsupportedModuleError(
            f"model {type(model).__name__} is neither an nn.Sequential of supported modules nor traceable by "
            f"torch.fx ({type(error).__name__}: {error})"
        ) from None


# -- aliasing: which nodes hold the same tensor ---------------------------------------------------
def _inplace_flag(node: torch.fx.Node) -> bool:
    return node.kwargs.get("inplace") is True or (len(node.args) > 1 and node.args[-1] is True)


def mutated(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node | None:
    """The node whose tensor ``node`` changes in place, or ``None``."""
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    if node.op == "call_module":
        changes = getattr(modules[node.target], "inplace", False) is True
    elif node.op == "call_method":
        changes = node.target.endswith("_") and not node.target.startswith("_")
    elif node.op == "call_function":
        changes = node.target in _INPLACE_FUNCTIONS or node.target in _INPLACE_OPERATORS or (
            (node.target in _ACTIVATION_FUNCTIONS or node.target in DROPOUT_FUNCTIONS) and _inplace_flag(node))
    else:
        changes = False
    return node.args[0] if changes else None


def _is_view(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may return (a view of) its first argument's tensor."""
    if node.op == "call_method":
        return node.target in _RESHAPE_METHODS or node.target in _PERMUTE_METHODS or node.target in VIEW_METHODS
    if node.op == "call_function":
        return (node.target in _RESHAPE_FUNCTIONS or node.target in _PERMUTE_FUNCTIONS or node.target in VIEW_FUNCTIONS
                or node.target in DROPOUT_FUNCTIONS or is_stochastic_depth(node.target))
    if node.op == "call_module":
        return isinstance(modules[node.target], RESHAPE_TYPES + PASSTHROUGH_TYPES)
    return False


def _is_alias(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s tensor is (a view of) its first argument's: a view or an in-place change."""
    return _is_view(node, modules) or mutated(node, modules) is not None


def _exclusive(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s tensor (through views and in-place changes) is used by one consumer only."""
    while True:
        if len(node.users) != 1:
            return False
        if not _is_alias(node, modules) or not isinstance(node.args[0], torch.fx.Node):
            return True
        node = node.args[0]


def _alias_groups(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """For every node, the nodes that may share its tensor (connected through views and in-place changes)."""
    parent: dict[torch.fx.Node, torch.fx.Node] = {}

    def root(node: torch.fx.Node) -> torch.fx.Node:
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    for node in graph.nodes:
        if _is_alias(node, modules) and isinstance(node.args[0], torch.fx.Node):
            parent[root(node)] = root(node.args[0])
    members: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in graph.nodes:
        members.setdefault(root(node), []).append(node)
    return {node: members[root(node)] for node in graph.nodes}


def check_inplace(graph: torch.fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Refuse in-place operations the graph cannot express, before the model runs.

    An in-place operation may change a tensor whose later uses all go through the changed node or
    the operation's result (those read the result). It may not change a parameter or buffer of the
    model, nor a tensor that is read after the change through a view taken before it.
    """
    order = {node: position for position, node in enumerate(graph.nodes)}
    groups = _alias_groups(graph, modules)
    for node in graph.nodes:
        target = mutated(node, modules)
        if target is None:
            continue
        group = groups[target]
        attribute = next((m for m in group if m.op == "get_attr"), None)
        if attribute is not None:
            raise UnsupportedModuleError(f"in-place operation at {_where(node)} changes the model's attribute "
                                         f"{attribute.target!r}; lowering never changes the model")
        for member in group:
            if member is target or order[member] >= order[node]:
                continue
            late = [user for user in member.users if order[user] > order[node]]
            if late:
                raise UnsupportedModuleError(
                    f"in-place operation at {_where(node)} changes {target.name!r}, which {late[0].name!r} reads "
                    f"afterwards through {member.name!r}; write the operation out of place")


# -- shapes -------------------------------------------------------------------------------------
class _Shapes(torch.fx.Interpreter):
    """Runs the traced model once and records every node's per-sample shape (``None``: not a tensor)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[torch.fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        self.shapes[n] = tuple(result.shape[1:]) if isinstance(result, Tensor) else None
        return result


def _shapes(gm: torch.fx.GraphModule, example_input: Tensor) -> dict[torch.fx.Node, tuple[int, ...] | None]:
    """Per-sample shapes of every node, from one run on a copy of ``example_input``."""
    interpreter = _Shapes(gm)
    try:
        with torch.no_grad():
            interpreter.run(example_input.detach().clone())
    except Exception as error:  # the model's own code may raise anything
        raise InputError(f"running the traced model on a copy of example_input (per-sample shape "
                         f"{tuple(example_input.shape[1:])}) failed: {type(error).__name__}: {error}") from None
    return interpreter.shapes


class _Walker:
    def __init__(self, gm: torch.fx.GraphModule, builder: GraphBuilder, example_input: Tensor,
                 shapes: dict[torch.fx.Node, tuple[int, ...] | None], gates: dict[str, int]) -> None:
        self.gm = gm
        #: the gate's operand position of the products named by the caller, and those lowered so far
        self.gates = gates
        self.gates_used: set[str] = set()
        self.builder = builder
        self.example = example_input
        self.shapes = shapes
        self.modules = dict(gm.named_modules())
        self.values: dict[torch.fx.Node, Any] = {}

    def run(self) -> Value:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                return self._output(node)
            self._check_batch_in_front(node)
            value = getattr(self, f"_{node.op}")(node)
            self.values[node] = value
            target = mutated(node, self.modules)
            if target is not None:
                self.values[target] = value  # later uses of the changed tensor read the result
        raise UnsupportedModuleError("the traced model has no output")

    def shape(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        """One sample's shape of ``node``'s tensor (``None``: not a tensor)."""
        return self.shapes.get(node)

    def _check_batch_in_front(self, node: torch.fx.Node) -> None:
        """Refuse ``node`` if it reads a tensor whose batch was moved from dimension 0 and is not a
        ``MultiheadAttention`` that takes that layout, nor a permute or transpose (which may move
        the batch back)."""
        moved = next((v for v in map(self.values.get, node.all_input_nodes) if isinstance(v, BatchMoved)), None)
        if moved is None:
            return
        if node.op == "call_module" and module_lowering(self.modules[node.target]) is not None:
            return
        if (node.op == "call_method" and node.target in _PERMUTE_METHODS) or (
                node.op == "call_function" and node.target in _PERMUTE_FUNCTIONS):
            return
        refuse_batch_moved(node, moved)

    # -- node kinds -----------------------------------------------------------------------------
    def _output(self, node: torch.fx.Node) -> Value:
        returned = node.args[0]
        if isinstance(returned, (tuple, list)) and len(returned) == 1:  # torch.export returns a tuple
            returned = returned[0]
        result = self.values.get(returned) if isinstance(returned, torch.fx.Node) else None
        if isinstance(result, BatchMoved):
            refuse_batch_moved(node, result)
        if not isinstance(result, Value):
            kind = type(returned).__name__ if not isinstance(returned, torch.fx.Node) else "a value not computed from the input"
            raise UnsupportedModuleError(f"the model must return one tensor computed from its input; it returns {kind}")
        return result

    def _placeholder(self, node: torch.fx.Node) -> Value:
        return self.builder.input(tuple(self.example.shape[1:]))

    def _get_attr(self, node: torch.fx.Node) -> Any:
        owner_path, _, name = node.target.rpartition(".")
        owner = self.gm.get_submodule(owner_path) if owner_path else self.gm
        value = getattr(owner, name)
        return value.detach().clone() if isinstance(value, Tensor) else value

    def _call_module(self, node: torch.fx.Node) -> Value:
        module = self.modules[node.target]
        several = module_lowering(module)
        if several is not None:
            return several(self, node, node.target, module)
        handler = handler_for(module)
        if handler is None:
            raise unsupported(node.target, module)
        value = self._tensor_arg(node, 0)
        return handler(self.builder, node.target, module, value, self.shape(node),
                       _exclusive(node.args[0], self.modules))

    def _call_method(self, node: torch.fx.Node) -> Any:
        if node.target in VIEW_METHODS:
            return METHODS[node.target](self, node)
        if self.shape(node) is None:
            return _NotATensor()
        name = node.target
        if name in METHODS:
            return METHODS[name](self, node)
        if name == "expand" and isinstance(self.values.get(node.args[0]), Tensor):
            return self._expand_constant(node)
        if name in _PERMUTE_METHODS:
            return self._permute(node)
        value = self._tensor_arg(node, 0)
        if name in _RESHAPE_METHODS:
            return self.builder.reshape(value, self.shape(node))
        plain = name[:-1] if name.endswith("_") else name
        if plain in _ACTIVATION_METHODS and len(node.args) == 1 and not node.kwargs:
            activation = Activation(plain, _ACTIVATION_METHODS[plain])
            return self.builder.activation(node.name, value, activation, _exclusive(node.args[0], self.modules))
        if plain == "add":
            return self._add(node)
        raise UnsupportedModuleError(f"unsupported tensor method {name!r} at {_where(node)}")

    def _call_function(self, node: torch.fx.Node) -> Any:
        target = node.target
        if target in VIEW_FUNCTIONS:
            return function_lowering(target)(self, node)
        if self.shape(node) is None:
            return _NotATensor()
        lowering = function_lowering(target)
        if lowering is not None:
            return lowering(self, node)
        if target in _ADD:
            return self._add(node)
        if target in _RESHAPE_FUNCTIONS:
            return self.builder.reshape(self._tensor_arg(node, 0), self.shape(node))
        if target is torch.cat:
            return self._cat(node)
        if target in _ACTIVATION_FUNCTIONS or target in _INPLACE_FUNCTIONS:
            return self._activation(node)
        if target in _PERMUTE_FUNCTIONS:
            return self._permute(node)
        if target in _IDENTITY_FUNCTIONS:
            return self._tensor_arg(node, 0)
        functional = _FUNCTIONAL.get(target)
        if functional is None:
            name = getattr(target, "__name__", repr(target))
            raise UnsupportedModuleError(f"unsupported operation {name!r} at {_where(node)}")
        return functional(self, node)

    # -- helpers --------------------------------------------------------------------------------
    def _activation(self, node: torch.fx.Node) -> Value:
        """A functional activation, applied out of place with its extra arguments (``inplace`` dropped)."""
        target = node.target
        fn = _INPLACE_FUNCTIONS.get(target, target)
        kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        extra = tuple(a for a in node.args[1:] if not isinstance(a, bool))  # a trailing bool is `inplace`
        if any(isinstance(a, torch.fx.Node) for a in (*extra, *kwargs.values())):
            raise UnsupportedModuleError(f"an activation's parameters must be constants, not computed ({_where(node)})")
        name = _ACTIVATION_FUNCTIONS.get(fn, getattr(fn, "__name__", "activation"))
        activation = Activation(name, _Bound(fn, extra, tuple(sorted(kwargs.items()))))
        return self.builder.activation(node.name, self._tensor_arg(node, 0), activation,
                                       _exclusive(node.args[0], self.modules))

    def _tensor_arg(self, node: torch.fx.Node, position: int) -> Value:
        argument = node.args[position] if position < len(node.args) else None
        value = self.values.get(argument) if isinstance(argument, torch.fx.Node) else None
        if not isinstance(value, Value):
            raise UnsupportedModuleError(f"argument {position} of {_where(node)} must be a tensor computed from the input")
        return value

    def _kwargs(self, node: torch.fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
        """The call's arguments by parameter name (``names``: the parameters in order)."""
        if len(node.args) > len(names):
            raise UnsupportedModuleError(f"too many arguments at {_where(node)}")
        arguments = {**dict(zip(names, node.args)), **node.kwargs}
        return {k: self.values.get(v, v) if isinstance(v, torch.fx.Node) else v for k, v in arguments.items()}

    def _add(self, node: torch.fx.Node) -> Value:
        operands = [self.values.get(a, a) if isinstance(a, torch.fx.Node) else a for a in node.args]
        if node.kwargs.get("alpha", 1) != 1 or set(node.kwargs) - {"alpha"}:
            raise UnsupportedModuleError(f"torch.add with alpha != 1 or other options is not supported ({_where(node)})")
        tensors = [o for o in operands if isinstance(o, Value)]
        constants = [o for o in operands if not isinstance(o, Value)]
        if any(isinstance(c, _NotATensor) for c in constants):
            raise UnsupportedModuleError(f"cannot add a non-tensor value at {_where(node)}")
        constant = None
        if constants:
            constant = sum(torch.as_tensor(c, dtype=self.builder.dtype) for c in constants)
            if constant.dim() > 0 and constant.shape[0] == 1 and constant.dim() == len(self.shape(node)) + 1:
                constant = constant[0]
        return self.builder.add(node.name, tensors, constant)

    def _cat(self, node: torch.fx.Node) -> Value:
        kwargs = self._kwargs(node, ("tensors", "dim"))
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        parts = [self.values.get(t) if isinstance(t, torch.fx.Node) else t for t in tensors]
        rank = len(self.shape(node))
        parts = [p[0] if isinstance(p, Tensor) and p.dim() == rank + 1 and len(p) == 1 else p for p in parts]
        if not all(isinstance(p, Value) or (isinstance(p, Tensor) and p.dim() == rank) for p in parts) or not any(
                isinstance(p, Value) for p in parts):
            raise UnsupportedModuleError(f"torch.cat needs tensors computed from the input, or constants of one "
                                         f"sample's rank with a batch dimension of 1, at {_where(node)}")
        dim = kwargs.get("dim", 0)
        dim = dim if dim >= 0 else dim + rank + 1
        if dim == 0:
            raise UnsupportedModuleError(f"torch.cat along the batch dimension is not supported ({_where(node)})")
        if all(isinstance(p, Value) for p in parts):
            return self.builder.cat(parts, dim - 1)
        return self.builder.cat_constant(node.name, parts, dim - 1)

    def _expand_constant(self, node: torch.fx.Node) -> Tensor:
        """A constant (a class token) expanded over the batch: kept with its batch dimension of 1."""
        constant = self.values[node.args[0]]
        rank = len(self.shape(node)) + 1
        if constant.dim() != rank or len(constant) != 1:
            raise UnsupportedModuleError(f"expanding a constant of shape {tuple(constant.shape)} is supported only "
                                         f"over a batch dimension of 1 ({_where(node)})")
        expanded = constant[0].expand(self.shape(node))
        return expanded[None].clone()

    def _permute(self, node: torch.fx.Node) -> Value | BatchMoved:
        """A permute or transpose: per-sample dimensions reordered (a renumbering); one that moves the
        batch dimension gives a :class:`BatchMoved` tensor, or moves a moved batch back."""
        source = self.values.get(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
        moved = isinstance(source, BatchMoved)
        value, batch = (source.value, source.dim) if moved else (self._tensor_arg(node, 0), 0)
        rank = len(value.shape) + 1
        try:
            if node.target == "transpose" or node.target is torch.transpose:
                a, b = (d % rank for d in node.args[1:3])
                dims = list(range(rank))
                dims[a], dims[b] = dims[b], dims[a]
            else:
                raw = node.args[1:] if node.op == "call_method" else node.args[1]
                dims = [d % rank for d in (raw[0] if len(raw) == 1 and isinstance(raw[0], (tuple, list)) else raw)]
        except (TypeError, ValueError, IndexError):
            raise UnsupportedModuleError(f"the dimensions of {_where(node)} must be given as positional integers") from None
        # dimension d of the tensor is the batch (d == batch) or per-sample dimension d (d < batch) or d − 1
        per_sample = [d if d < batch else d - 1 for d in dims if d != batch]
        permuted = self.builder.permute(value, tuple(per_sample)) if per_sample != sorted(per_sample) else value
        position = dims.index(batch)
        return permuted if position == 0 else BatchMoved(permuted, position)


def _parameter(node: torch.fx.Node, kwargs: dict[str, Any], name: str, required: bool) -> Tensor | None:
    """The constant tensor ``kwargs[name]`` of a functional layer (a weight or bias of the model)."""
    value = kwargs.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, Tensor):
        raise UnsupportedModuleError(f"the {name} of {_where(node)} must be a tensor of the model, not computed "
                                     "from the input")
    return value


def _functional_linear(walker: _Walker, node: torch.fx.Node) -> Value:
    kwargs = walker._kwargs(node, ("input", "weight", "bias"))
    return walker.builder.linear(node.name, nn.Linear, walker._tensor_arg(node, 0),
                                 _parameter(node, kwargs, "weight", True), _parameter(node, kwargs, "bias", False))


def _functional_conv(walker: _Walker, node: torch.fx.Node) -> Value:
    kwargs = walker._kwargs(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    value = walker._tensor_arg(node, 0)
    dims = len(value.shape) - 1
    layer_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(dims)
    padding = kwargs.get("padding", 0)
    if layer_type is None or isinstance(padding, str):
        raise UnsupportedModuleError(f"a functional convolution over {dims} dimensions or with string padding is "
                                     f"not supported ({_where(node)})")

    def expand(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims

    return walker.builder.conv(node.name, layer_type, value, _parameter(node, kwargs, "weight", True),
                               _parameter(node, kwargs, "bias", False), walker.shape(node),
                               expand(kwargs.get("stride", 1)), expand(padding), expand(kwargs.get("dilation", 1)),
                               kwargs.get("groups", 1))


def _functional_batch_norm(walker: _Walker, node: torch.fx.Node) -> Value:
    """``F.batch_norm`` with running statistics (eval): a per-channel scale and shift, folded where it can be."""
    kwargs = walker._kwargs(node, ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                                   "eps"))
    if kwargs.get("training", False):
        raise InputError(f"batch norm in training mode at {_where(node)}; put the model in eval mode (model.eval())")
    value = walker._tensor_arg(node, 0)
    mean = _parameter(node, kwargs, "running_mean", True)
    var = _parameter(node, kwargs, "running_var", True)
    weight, bias = _parameter(node, kwargs, "weight", False), _parameter(node, kwargs, "bias", False)
    scale = torch.rsqrt(var + kwargs.get("eps", 1e-5))
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    layer_type = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}[len(value.shape)]
    return walker.builder.batch_norm(node.name, layer_type, value, scale, shift,
                                     fold=_exclusive(node.args[0], walker.modules))


def _functional_pool(module_type: type, names: tuple[str, ...]) -> Callable[[_Walker, torch.fx.Node], Value]:
    def lower_pool(walker: _Walker, node: torch.fx.Node) -> Value:
        kwargs = walker._kwargs(node, ("input", *names))
        kwargs.pop("input", None)
        if kwargs.get("return_indices"):
            raise UnsupportedModuleError(f"return_indices=True is not supported ({_where(node)})")
        try:
            module = module_type(**{k: v for k, v in kwargs.items() if k != "return_indices"})
        except (TypeError, ValueError) as error:
            raise UnsupportedModuleError(f"cannot read the pooling's arguments at {_where(node)}: {error}") from None
        handler = handler_for(module)
        return handler(walker.builder, node.name, module, walker._tensor_arg(node, 0), walker.shape(node), False)

    return lower_pool


def _functional_norm(center: bool) -> Callable[[_Walker, torch.fx.Node], Value]:
    """``F.layer_norm`` (``center``) or ``F.rms_norm``: the module's lowering with the call's arguments."""
    names = ("input", "normalized_shape", "weight", "bias", "eps") if center else ("input", "normalized_shape",
                                                                                   "weight", "eps")
    module_type = nn.LayerNorm if center else nn.RMSNorm

    def lower_norm(walker: _Walker, node: torch.fx.Node) -> Value:
        kwargs = walker._kwargs(node, names)
        value = walker._tensor_arg(node, 0)
        normalized = kwargs.get("normalized_shape")
        normalized = tuple(normalized) if isinstance(normalized, (tuple, list)) else (normalized,)
        module = module_type(normalized, eps=kwargs.get("eps", 1e-5 if center else None),
                             elementwise_affine=False)
        features = normalized_features(node.name, module, value)
        weight = _parameter(node, kwargs, "weight", False)
        bias = _parameter(node, kwargs, "bias", False) if center else None
        eps = module.eps if module.eps is not None else torch.finfo(walker.builder.dtype).eps
        return walker.builder.layer_norm(node.name, module_type, value, features, weight, bias, eps, center)

    return lower_norm


_MAX_POOL_PARAMETERS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
_AVG_POOL_PARAMETERS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")

_FUNCTIONAL: dict[Any, Callable[[_Walker, torch.fx.Node], Value]] = {
    F.linear: _functional_linear,
    F.batch_norm: _functional_batch_norm,
    F.layer_norm: _functional_norm(center=True),
    F.rms_norm: _functional_norm(center=False),
    F.conv1d: _functional_conv,
    F.conv2d: _functional_conv,
    F.conv3d: _functional_conv,
    F.max_pool1d: _functional_pool(nn.MaxPool1d, _MAX_POOL_PARAMETERS),
    F.max_pool2d: _functional_pool(nn.MaxPool2d, _MAX_POOL_PARAMETERS),
    F.avg_pool1d: _functional_pool(nn.AvgPool1d, _AVG_POOL_PARAMETERS[:-1]),
    F.avg_pool2d: _functional_pool(nn.AvgPool2d, _AVG_POOL_PARAMETERS),
    F.adaptive_avg_pool1d: _functional_pool(nn.AdaptiveAvgPool1d, ("output_size",)),
    F.adaptive_avg_pool2d: _functional_pool(nn.AdaptiveAvgPool2d, ("output_size",)),
    F.scaled_dot_product_attention: scaled_dot_product_attention,
}


def lower_traced(model: nn.Module, example_input: Tensor, builder: GraphBuilder,
                 gates: dict[str, int] | None = None) -> Value:
    """Trace ``model`` with ``torch.fx`` and build its graph; returns the output's value.

    Every module the traced graph calls is checked to be supported, and every in-place operation
    to be expressible, before the model runs on (a copy of) the example's first sample. A
    ``torch.fx.GraphModule`` (a traced model, or :func:`~graphlrp.frontends.exported.from_exported`'s
    module) is lowered from its own graph, and shapes are found by running it on (a copy of) the
    whole example: such a graph may hold the batch size it was made with. ``gates`` names products
    of two computed tensors (by traced node name) and which operand is the gate.
    """
    if isinstance(model, torch.fx.GraphModule):
        return _lower_graph(model, example_input, builder, example_input, gates)
    return _lower_graph(_trace(model), example_input, builder, example_input[:1], gates)


def _lower_graph(gm: torch.fx.GraphModule, example_input: Tensor, builder: GraphBuilder, shape_input: Tensor,
                 gates: dict[str, int] | None) -> Value:
    modules = dict(gm.named_modules())
    inputs = [node for node in gm.graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        names = ", ".join(node.name for node in inputs)
        raise UnsupportedModuleError(f"the model must take one input tensor; its forward takes {len(inputs)} ({names})")
    for node in gm.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if module is not None and handler_for(module) is None and module_lowering(module) is None:
            raise unsupported(node.target, modules[node.target])
    check_inplace(gm.graph, modules)
    walker = _Walker(gm, builder, example_input, _shapes(gm, shape_input), dict(gates or {}))
    output = walker.run()
    unknown = sorted(set(walker.gates) - walker.gates_used)
    if unknown:
        products = sorted(level.name for level in builder.levels if level.layer_type == "gate")
        raise InputError(f"gates= names {unknown}, which are not products of two computed tensors; the model's "
                         f"products are {products}")
    return output
