"""Programs saved with ``torch.export``: their ATen graph as the ``torch.fx`` graph graphlrp lowers.

``torch.export.export(model, (x,))`` records a model as a graph of ATen operators
(``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``, ``aten.relu_`` ...); ``torch.export.save``
writes it to a ``.pt2`` file and ``torch.export.load`` reads it back without the model's Python
code. :func:`from_exported` turns such a program into a ``torch.fx.GraphModule`` whose nodes call
the torch functions with the same meaning (each ATen operator in :data:`ATEN_FUNCTIONS`, arguments
reordered where the two differ), which :func:`graphlrp.lower` lowers like a traced model. The
program's shape guards are dropped: the graph computes every sample alone, so it takes any batch.
An ATen operator without a torch twin here stays as it is and is refused, by name, when lowered.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.fx
import torch.nn.functional as F

from ..errors import ArgumentTypeError, InputError

__all__ = ["ATEN_FUNCTIONS", "from_exported", "check_exported_input"]

aten = torch.ops.aten

#: ATen operators and the torch function of the same signature (and meaning) each becomes
ATEN_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    aten.conv1d.default: F.conv1d, aten.conv2d.default: F.conv2d, aten.conv3d.default: F.conv3d,
    aten.linear.default: F.linear,
    aten.relu.default: torch.relu, aten.relu_.default: torch.relu_,
    aten.sigmoid.default: torch.sigmoid, aten.sigmoid_.default: torch.sigmoid_,
    aten.tanh.default: torch.tanh, aten.tanh_.default: torch.tanh_,
    aten.hardtanh.default: F.hardtanh, aten.hardtanh_.default: F.hardtanh_,
    aten.leaky_relu.default: F.leaky_relu, aten.leaky_relu_.default: F.leaky_relu_,
    aten.gelu.default: F.gelu, aten.silu.default: F.silu, aten.mish.default: F.mish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.hardswish.default: F.hardswish,
    aten.softplus.default: F.softplus, aten.selu.default: F.selu, aten.celu.default: F.celu,
    aten.add.Tensor: torch.add, aten.add_.Tensor: operator.iadd,
    aten.mul.Tensor: torch.mul, aten.mean.dim: torch.mean, aten.sum.dim_IntList: torch.sum,
    aten.cat.default: torch.cat, aten.permute.default: torch.permute, aten.transpose.int: torch.transpose,
    aten.flatten.using_ints: torch.flatten, aten.view.default: torch.reshape, aten.reshape.default: torch.reshape,
    aten._unsafe_view.default: torch.reshape, aten.squeeze.dim: torch.squeeze, aten.unsqueeze.default: torch.unsqueeze,
    aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d, aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
}

#: in-place activations torch has no function for: the out-of-place function with ``inplace=True``
_INPLACE_BY_FLAG: dict[Any, Callable[..., Any]] = {
    aten.silu_.default: F.silu, aten.hardswish_.default: F.hardswish, aten.hardsigmoid_.default: F.hardsigmoid,
    aten.relu6.default: F.relu6,
}

#: pooling operators whose empty ``stride`` means the kernel size (torch's functions take ``None``)
_POOLING: dict[Any, Callable[..., Any]] = {
    aten.max_pool1d.default: F.max_pool1d, aten.max_pool2d.default: F.max_pool2d,
    aten.avg_pool1d.default: F.avg_pool1d, aten.avg_pool2d.default: F.avg_pool2d,
}

#: operators that return their input's values unchanged, and the torch function each becomes
_IDENTITIES: dict[Any, Callable[..., Any]] = {
    aten.clone.default: torch.clone, aten.alias.default: torch.clone, aten.detach.default: torch.detach,
    aten.contiguous.default: torch.Tensor.contiguous,
}


def from_exported(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """The program's graph, with torch functions in place of ATen operators, as a module to lower.

    Parameters
    ----------
    program : torch.export.ExportedProgram
        From ``torch.export.export`` or ``torch.export.load``; not modified.

    Returns
    -------
    torch.fx.GraphModule
        A new module (``program.module()``) sharing the program's parameters and buffers, whose
        graph :func:`graphlrp.lower` lowers node by node; it computes what the program computes,
        for any batch size.

    Raises
    ------
    ArgumentTypeError
        ``program`` is not an ``ExportedProgram``.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise ArgumentTypeError(f"expected a torch.export.ExportedProgram, got {type(program).__name__}")
    module = program.module()
    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target.startswith("_guards"):
            graph.erase_node(node)  # checks the input's shape against the exported one, nothing else
        elif node.op == "call_function":
            _translate(node)
    graph.lint()
    module.recompile()
    return module


def _translate(node: torch.fx.Node) -> None:
    """Point ``node`` at the torch function of its ATen operator, with arguments in that function's order."""
    target = node.target
    if target in ATEN_FUNCTIONS:
        node.target = ATEN_FUNCTIONS[target]
    elif target in _INPLACE_BY_FLAG:
        node.target = _INPLACE_BY_FLAG[target]
        if target is not aten.relu6.default:
            node.kwargs = {**node.kwargs, "inplace": True}
    elif target in _POOLING:
        node.target = _POOLING[target]
        if len(node.args) > 2 and not node.args[2]:  # stride [] is the kernel size
            node.args = (*node.args[:2], node.args[1], *node.args[3:])
    elif target in _IDENTITIES:
        node.target = _IDENTITIES[target]
        node.args, node.kwargs = node.args[:1], {}
    elif target is aten.layer_norm.default:  # (input, normalized_shape, weight, bias, eps, cudnn_enable)
        node.target = F.layer_norm
        node.args = node.args[:5]
    elif target is aten.dropout.default:  # (input, p, train)
        node.target = F.dropout
        node.args, node.kwargs = (node.args[0],), {"p": node.args[1], "training": node.args[2]}
    elif target is aten.batch_norm.default:
        # (input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled)
        x, weight, bias, mean, var, training, momentum, eps = node.args[:8]
        node.target = F.batch_norm
        node.args = (x, mean, var)
        node.kwargs = {"weight": weight, "bias": bias, "training": training, "momentum": momentum, "eps": eps}


def check_exported_input(module: torch.fx.GraphModule, example_input: torch.Tensor) -> None:
    """Refuse an example whose per-sample shape differs from the one a graph's input records.

    ``torch.export`` records the shape of the example it exported with on the input node (a
    dimension declared dynamic accepts any size); other graphs record none and accept any example.
    """
    for node in module.graph.nodes:
        if node.op != "placeholder":
            continue
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        if shape is None:
            return
        expected = tuple(int(s) if isinstance(s, int) else None for s in shape[1:])
        given = tuple(example_input.shape[1:])
        if len(expected) != len(given) or any(e is not None and e != g for e, g in zip(expected, given)):
            raise InputError(f"example_input has per-sample shape {given}; the program was exported for "
                             f"{tuple('any' if e is None else e for e in expected)}")
        return
