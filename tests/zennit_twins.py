"""Zennit twins of traced networks: the same modules, with every operation Zennit has no rule for made explicit.

Zennit attaches rules to modules and lets autograd carry relevance between them, so an operation
that is not a module (``x + y``, ``x * gate``, ``x.mean(...)``, ``F.layer_norm``) is differentiated
instead of explained. :func:`zennit_twin` traces a model with ``torch.fx`` and rewrites each such
operation into what the LRP conventions graphlrp documents prescribe, written here independently:

* a sum of two computed tensors becomes Zennit's own ``Sum`` module (rule ``Norm``);
* ``mean`` over per-sample dimensions becomes a :class:`Mean` module (rule ``Norm``);
* a product of a signal and a sigmoid gate (squeeze-and-excitation) becomes :func:`gate_signal`:
  the forward product, relevance passed to the signal unchanged, none to the gate (the signal-gate
  convention of LXT/AttnLRP);
* a product by a constant (ConvNeXt's layer scale) becomes :func:`pass_scale`: relevance passes;
* layer normalization becomes :class:`ConstantStdLayerNorm`, ``σ`` detached (LXT's convention),
  so that the ε rule sees its linear map;
* functional (adaptive) average pooling becomes its module (rule ``Norm``) and in-place
  operations become out-of-place, which Zennit's hooks need.

:class:`TracedMergeBatchNorm` merges every batch norm into the dense or convolution layer it reads
directly (found in the traced graph, where Zennit's ``SequentialMergeBatchNorm`` only looks at
adjacent children of an ``nn.Sequential``); :data:`TWIN_LAYER_MAP` gives the added modules their rules.
"""
from __future__ import annotations

import operator

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from zennit import rules as zrules
from zennit.canonizers import MergeBatchNorm
from zennit.layer import Sum
from zennit.types import BatchNorm


class Mean(nn.Module):
    """``x.mean(dims, keepdim)`` as a module, so that Zennit can give it the ``Norm`` rule."""

    def __init__(self, dims: tuple[int, ...], keepdim: bool) -> None:
        super().__init__()
        self.dims, self.keepdim = dims, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(self.dims, keepdim=self.keepdim)


class ConstantStdLayerNorm(nn.Module):
    """Layer normalization over the last dimension with ``σ`` detached: a linear map of the input."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = weight, bias, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(-1, keepdim=True)
        std = (centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt().detach()
        y = centered / std
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class _GateSignal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, signal: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.gate_shape = gate.shape
        return signal * gate

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        # zeros rather than no gradient: Zennit's hooks in the gate branch expect a gradient
        return relevance, relevance.new_zeros(ctx.gate_shape)


def gate_signal(signal: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``signal * gate``; relevance goes to the signal unchanged and none to the gate."""
    return _GateSignal.apply(signal, gate)


def pass_scale(signal: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``signal * factor`` for a constant factor; relevance passes unchanged."""
    return _GateSignal.apply(signal, factor)


torch.fx.wrap("gate_signal")
torch.fx.wrap("pass_scale")

#: the rules of the modules :func:`zennit_twin` adds, to prepend to a Zennit composite's layer map;
#: batch norms not merged into a layer pass relevance, as graphlrp's unfolded batch norms do
TWIN_LAYER_MAP = [(Sum, zrules.Norm()), (Mean, zrules.Norm()), (BatchNorm, zrules.Pass())]


def twin_layer_map(epsilon: float = 1e-6) -> list:
    """:data:`TWIN_LAYER_MAP` and the ε rule (the composites' default) on layer normalizations."""
    return TWIN_LAYER_MAP + [(ConstantStdLayerNorm, zrules.Epsilon(epsilon))]


SIGMOIDS = (nn.Sigmoid, nn.Hardsigmoid)
ADDS = {operator.add, operator.iadd, torch.add}
MULS = {operator.mul, operator.imul, torch.mul}
#: functional average poolings and their modules
POOLS = {F.avg_pool2d: nn.AvgPool2d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d}


def _is_computed(argument: object) -> bool:
    return isinstance(argument, torch.fx.Node) and argument.op != "get_attr"


def _through_sigmoid(module: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(module.get_submodule(node.target), SIGMOIDS)
    return node.target in (torch.sigmoid, F.sigmoid, F.hardsigmoid) or (node.op == "call_method"
                                                                          and node.target == "sigmoid")


def zennit_twin(model: nn.Module) -> torch.fx.GraphModule:
    """``model`` traced, sharing its modules and parameters, rewritten for Zennit (see the module docstring)."""
    twin = torch.fx.symbolic_trace(model)
    graph = twin.graph
    for count, node in enumerate(list(graph.nodes)):
        computed = [a for a in node.args if _is_computed(a)]
        if node.op == "call_function" and node.target in ADDS and len(computed) == 2 and not node.kwargs:
            twin.add_submodule(f"twin_sum_{count}", Sum())
            with graph.inserting_before(node):
                stacked = graph.call_function(torch.stack, (list(node.args), -1))
                node.replace_all_uses_with(graph.call_module(f"twin_sum_{count}", (stacked,)))
            graph.erase_node(node)
        elif node.op in ("call_function", "call_method") and node.target in (*MULS, "mul"):
            a, b = node.args
            if len(computed) == 2:
                signal, gate = (b, a) if _through_sigmoid(twin, a) else (a, b)
                assert _through_sigmoid(twin, gate), f"{node.format_node()}: a product of two tensors that is no gate"
                _replace_call(graph, node, gate_signal, (signal, gate))
            elif len(computed) == 1:
                signal, factor = (a, b) if _is_computed(a) else (b, a)
                _replace_call(graph, node, pass_scale, (signal, factor))
        elif node.op in ("call_function", "call_method") and node.target in (torch.mean, "mean"):
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = tuple(dims) if isinstance(dims, (list, tuple)) else (dims,)
            twin.add_submodule(f"twin_mean_{count}", Mean(dims, bool(node.kwargs.get("keepdim", False))))
            _replace_module(graph, node, f"twin_mean_{count}", node.args[0])
        elif node.op == "call_function" and node.target is F.layer_norm:
            _, _, weight, bias, eps = (list(node.args) + [None] * 5)[:5]
            eps = node.kwargs.get("eps", eps if eps is not None else 1e-5)
            twin.add_submodule(f"twin_layer_norm_{count}",
                               ConstantStdLayerNorm(_attribute(twin, weight), _attribute(twin, bias), eps))
            _replace_module(graph, node, f"twin_layer_norm_{count}", node.args[0])
        elif node.op == "call_module" and isinstance(twin.get_submodule(node.target), nn.LayerNorm):
            norm = twin.get_submodule(node.target)
            twin.add_submodule(f"twin_layer_norm_{count}", ConstantStdLayerNorm(norm.weight, norm.bias, norm.eps))
            _replace_module(graph, node, f"twin_layer_norm_{count}", node.args[0])
        elif node.op == "call_function" and node.target in POOLS:
            twin.add_submodule(f"twin_avg_pool_{count}", POOLS[node.target](*node.args[1:], **node.kwargs))
            _replace_module(graph, node, f"twin_avg_pool_{count}", node.args[0])
        elif "inplace" in node.kwargs:
            node.kwargs = {**node.kwargs, "inplace": False}
    for module in twin.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    graph.lint()
    twin.recompile()
    return twin


def _attribute(module: torch.fx.GraphModule, node: object) -> torch.Tensor | None:
    if node is None:
        return None
    assert isinstance(node, torch.fx.Node) and node.op == "get_attr", f"a layer norm parameter that is computed: {node}"
    return module.get_parameter(node.target)


def _replace_call(graph: torch.fx.Graph, node: torch.fx.Node, function, args: tuple) -> None:
    with graph.inserting_before(node):
        node.replace_all_uses_with(graph.call_function(function, args))
    graph.erase_node(node)


def _replace_module(graph: torch.fx.Graph, node: torch.fx.Node, target: str, argument: torch.fx.Node) -> None:
    with graph.inserting_before(node):
        node.replace_all_uses_with(graph.call_module(target, (argument,)))
    graph.erase_node(node)


class TracedMergeBatchNorm(MergeBatchNorm):
    """Zennit's batch norm merging, for every batch norm that reads a dense or convolution layer's output
    (and is that output's only reader) in the traced graph of the root module."""

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorm]:
        traced = root_module if isinstance(root_module, torch.fx.GraphModule) else torch.fx.symbolic_trace(root_module)
        instances = []
        for node in traced.graph.nodes:
            if node.op != "call_module" or not isinstance(traced.get_submodule(node.target), self.batch_norm_type):
                continue
            source = node.args[0]
            if (isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1
                    and isinstance(traced.get_submodule(source.target), self.linear_type)):
                instance = self.copy()
                instance.register((traced.get_submodule(source.target),), traced.get_submodule(node.target))
                instances.append(instance)
        return instances
