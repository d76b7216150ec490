"""``graphlrp.lower``: a torch network to a :class:`~graphlrp.Graph`."""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
from torch import Tensor

from ..blocks import BLOCK_KINDS
from ..blocks.pool import MODES as MAX_POOL_MODES
from ..errors import GraphTooLargeError, LoweringMismatchError, UnsupportedModuleError
from ..graph import Graph
from ..memory import check_budget
from .builder import GraphBuilder, Value
from .modules import handler_for, supported_modules


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path or type(module).__name__, module


def unsupported(path: str, module: nn.Module) -> UnsupportedModuleError:
    """The error for a module that cannot be lowered."""
    kind = type(module)
    return UnsupportedModuleError(
        f"cannot lower module {path!r} of type {kind.__module__}.{kind.__name__}; supported: {supported_modules()}"
    )


def _output_shape(path: str, module: nn.Module, shape: tuple[int, ...], like: Tensor) -> tuple[int, ...]:
    probe = torch.zeros((1, *shape), dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            return tuple(module(probe).shape[1:])
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} ({type(module).__name__}) cannot take one sample of shape {shape}: {error}") from None


def _lower_sequential(model: nn.Module, example_input: Tensor, builder: GraphBuilder) -> Value:
    value = builder.input(tuple(example_input.shape[1:]))
    for path, module in _leaves(model, ""):
        handler = handler_for(module)
        if handler is None:
            raise unsupported(path, module)
        out_shape = _output_shape(path, module, value.shape, example_input)
        value = handler(builder, path, module, value, out_shape, True)
    return value


def _is_sequential(model: nn.Module) -> bool:
    return all(isinstance(m, nn.Sequential) or handler_for(m) is not None for _, m in _leaves(model, ""))


def lower(
    model: nn.Module,
    example_input: Tensor,
    block_kind: str = "auto",
    max_pool: str = "winner",
    check: bool = True,
    max_edges: int | None = None,
    max_bytes: int | None = None,
) -> Graph:
    """Lower a torch network to a :class:`~graphlrp.Graph` of neurons and weighted edges.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` (nested ones too) of supported modules, or any module that
        ``torch.fx`` can trace (residual additions, concatenations, functional calls). Supported:
        ``nn.Linear``, ``nn.Conv1d/2d/3d``, max, average and adaptive average pooling, batch norm in
        eval mode (folded into the layer before it when that is a dense or convolution layer whose
        output nothing else uses), element-wise activations, flatten/reshape/permute, identity and
        dropout (eval). Pruned layers (``torch.nn.utils.prune``) are lowered with their effective
        weights; zero weights produce no edge. The model is read, never modified or copied.
    example_input : Tensor
        A batch ``(B, ...)`` of inputs; fixes the input shape and checks the lowering.
    block_kind : {'auto', 'dense', 'sparse', 'edges'}
        How a dense layer's edges are held: ``'auto'`` chooses by density (sparse CSR at or below
        :data:`graphlrp.lower.builder.SPARSE_DENSITY`, else a dense matrix).
    max_pool : {'winner', 'proportional'}
        Max pooling sends relevance to the window's winner, or splits it over the window in
        proportion to the inputs (see :class:`graphlrp.blocks.MaxPoolBlock`).
    check : bool
        Compare the graph's forward with ``model(example_input)`` and raise
        :class:`~graphlrp.errors.LoweringMismatchError` if they differ.
    max_edges : int, optional
        Refuse a graph with more edges (convolutions' implicit edges included); no limit by default.
    max_bytes : int, optional
        Refuse a graph whose blocks would hold more bytes (default: half the available memory).
        Both are checked on an estimate, before any block is allocated, and raise
        :class:`~graphlrp.errors.GraphTooLargeError` saying how large the graph would be.

    Returns
    -------
    Graph
    """
    if block_kind != "auto" and block_kind not in BLOCK_KINDS:
        raise ValueError(f"unknown block_kind {block_kind!r}; choose 'auto' or one of {BLOCK_KINDS}")
    if max_pool not in MAX_POOL_MODES:
        raise ValueError(f"unknown max_pool mode {max_pool!r}; choose one of {MAX_POOL_MODES}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batch: a tensor of shape (batch, ...)")
    builder = GraphBuilder(block_kind, max_pool, example_input.dtype)
    if _is_sequential(model):
        output = _lower_sequential(model, example_input, builder)
    else:
        from .fx import lower_traced

        output = lower_traced(model, example_input, builder)
    _check_size(builder, max_edges, max_bytes)
    graph = builder.finish(output).to(device=example_input.device)
    if check:
        _check_forward(model, graph, example_input)
    return graph


def _check_size(builder: GraphBuilder, max_edges: int | None, max_bytes: int | None) -> None:
    nodes, edges, nbytes = builder.estimate()
    what = f"the graph ({nodes:,} nodes, {edges:,} edges)"
    if max_edges is not None and edges > max_edges:
        raise GraphTooLargeError(f"{what} has more edges than max_edges={max_edges:,}")
    check_budget(what, nbytes, max_bytes)


def _check_forward(model: nn.Module, graph: Graph, example_input: Tensor) -> None:
    with torch.no_grad():
        expected = model(example_input)
    actual = graph(example_input.to(graph.dtype))
    if actual.shape != expected.shape:
        raise LoweringMismatchError(f"graph output has shape {tuple(actual.shape)}, model's {tuple(expected.shape)}")
    tolerance = 1e-4 if expected.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = expected.abs().max().clamp(min=1.0)
    error = (actual - expected).abs().max()
    if bool(error > tolerance * scale):
        raise LoweringMismatchError(
            f"the lowered graph's output differs from the model's by {float(error):.3g} on the example input; "
            "a module may compute something its type does not say (a custom forward)"
        )
