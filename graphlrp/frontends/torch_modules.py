"""``graphlrp.lower``: a torch network to a :class:`~graphlrp.Graph`.

Lowering reads the model and never changes it: modes are checked before anything runs, the model
runs only on copies of the example input, and every module's training flag and buffers are the
same, bit for bit, after the call (whether it returns or raises).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from ..blocks import general_kinds
from ..blocks.pool import MODES as MAX_POOL_MODES
from ..errors import (
    ArgumentTypeError, GraphTooLargeError, InputError, LoweringMismatchError, UnsupportedModuleError,
)
from ..graph import Graph
from ..memory import check_budget
from .builder import ATTENTION_RULES, GraphBuilder, Value
from .exported import check_exported_input, from_exported
from .fx import lower_traced
from .modules import check_per_sample, handler_for, unsupported

#: seed of the random input the lowering check compares the graph and the model on
CHECK_SEED = 0


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """Every module an ``nn.Sequential`` calls, in order: one object used twice is yielded twice."""
    if isinstance(module, nn.Sequential):
        for name, child in module._modules.items():
            yield from _leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path or type(module).__name__, module


def _output_shape(path: str, module: nn.Module, shape: tuple[int, ...], like: Tensor) -> tuple[int, ...]:
    probe = torch.zeros((1, *shape), dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            return tuple(module.forward(probe).shape[1:])  # forward: no user hook sees the probe
    except (RuntimeError, ValueError) as error:
        raise InputError(f"{path} ({type(module).__name__}) cannot take one sample of shape {shape}: {error}") from None


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
    return all(handler_for(m) is not None for _, m in _leaves(model, ""))


def lower(
    model: nn.Module | torch.export.ExportedProgram,
    example_input: Tensor,
    block_kind: str = "auto",
    max_pool: str = "winner",
    check: bool = True,
    max_edges: int | None = None,
    max_bytes: int | None = None,
    gates: Mapping[str, int] | None = None,
    attention: str = "cp-lrp",
) -> Graph:
    """Lower a torch network to a :class:`~graphlrp.Graph` of neurons and weighted edges.

    Parameters
    ----------
    model : nn.Module or torch.export.ExportedProgram
        An ``nn.Sequential`` (nested ones too) of supported modules, a program saved with
        ``torch.export`` (``torch.export.load``; lowered from its ATen operators, see
        :mod:`graphlrp.frontends.exported`), or any module that ``torch.fx`` can trace (residual additions, concatenations, functional calls, in-place
        activations and additions) and that returns one tensor. Supported: ``nn.Linear``,
        ``nn.Conv1d/2d/3d``, max, average and adaptive average pooling, batch norm in eval mode
        (folded into the layer before it when that is a dense or convolution layer whose output
        nothing else uses), element-wise activations (``inplace=True`` too), ``mean``/``sum`` over
        per-sample dimensions, products by constants and of two computed tensors (gates, see
        ``gates``), flatten/reshape/permute/transpose, chunk/split/unbind/narrow/select and
        indexing, identity, dropout and stochastic depth (eval). A module object used several times is lowered at every use.
        Pruned layers (``torch.nn.utils.prune``) are lowered with their effective weights; zero
        weights produce no edge. The model is never modified: batch norm or dropout in training mode
        is refused before anything runs, and the model runs only on copies of ``example_input``.
    example_input : Tensor
        A batch ``(B, ...)`` of finite inputs, ``B >= 1``, of the model's floating-point dtype and
        device; fixes the input shape and checks the lowering. It is never modified.
    block_kind : {'auto', 'dense', 'sparse', 'edges'}
        How a dense layer's edges are held: ``'auto'`` chooses by density (sparse CSR at or below
        the device's threshold, :mod:`graphlrp.thresholds`, else a dense matrix) and chooses again
        when the graph moves to another device (:meth:`Graph.to`); a kind given is kept.
    max_pool : {'winner', 'proportional'}
        Max pooling sends relevance to the window's winner, or splits it over the window in
        proportion to the inputs (see :class:`graphlrp.blocks.MaxPoolBlock`).
    check : bool
        Compare the graph's forward with the model's on ``example_input`` and on a random input of
        the same shape and magnitude, and raise :class:`~graphlrp.errors.LoweringMismatchError` if
        they differ.
    max_edges : int, optional
        Refuse a graph with more edges (convolutions' implicit edges included); no limit by default.
    max_bytes : int, optional
        Refuse a graph whose blocks would hold more bytes (default: half the available memory).
        Both are checked on an estimate, before any block is allocated, and raise
        :class:`~graphlrp.errors.GraphTooLargeError` saying how large the graph would be.
    gates : mapping of str to int, optional
        For a product ``a * b`` of two computed tensors, which operand is the gate (0 for ``a``, 1
        for ``b``), by the product's node name in the traced graph (its level's name). The gate's
        values become the product's per-sample edge weights and it receives no relevance through
        the product; the other operand receives all of it. By default the gate is the operand
        computed by a sigmoid or hard sigmoid (a squeeze-and-excitation gate), else the one that
        is broadcast over the other, else ``b``.
    attention : {'cp-lrp', 'attnlrp'}
        How ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention`` are lowered.
        ``'cp-lrp'`` (conservative propagation, Ali et al., 2022): one attention block whose edge
        weights are the softmax probabilities, held constant; queries and keys receive no
        relevance. ``'attnlrp'`` (Achtibat et al., 2024): the scores ``Q Kᵀ`` and the
        probabilities are levels of their own, both products split their relevance equally
        between the operands (the uniform rule) and the softmax passes it by its Jacobian
        (Proposition 3.1), so queries and keys receive relevance too. See ``docs/transformers.md``.

    Returns
    -------
    Graph

    Raises
    ------
    ArgumentTypeError
        ``model`` is not a module, ``example_input`` not a tensor, or an option of the wrong type.
    InputError
        A bad ``example_input`` (shape, dtype, device, NaN or inf, empty), an unknown option, or a
        mode-dependent module in training mode.
    UnsupportedModuleError
        A module or operation that cannot be lowered (named by its path), or a model that does not
        return one tensor.
    LoweringMismatchError
        The graph does not compute what the model computes (with ``check``).
    GraphTooLargeError
        The graph would exceed ``max_edges`` or ``max_bytes``.
    """
    _check_options(block_kind, max_pool, check, max_edges, max_bytes)
    _check_gates(gates)
    if not isinstance(attention, str) or attention not in ATTENTION_RULES:
        raise InputError(f"unknown attention rule {attention!r}; choose one of {ATTENTION_RULES}")
    if isinstance(model, torch.export.ExportedProgram):
        model = from_exported(model)
    if isinstance(model, torch.fx.GraphModule) and isinstance(example_input, Tensor):
        check_exported_input(model, example_input)
    _check_model(model)
    _check_example(model, example_input)
    with _state_preserved(model):
        builder = GraphBuilder(block_kind, max_pool, example_input.dtype, attention_rule=attention)
        if _is_sequential(model):
            if gates:
                raise InputError(f"gates= names {sorted(gates)}, but an nn.Sequential has no products")
            output = _lower_sequential(model, example_input, builder)
        else:
            output = lower_traced(model, example_input, builder, gates)
        _check_size(builder, max_edges, max_bytes, example_input.device)
        graph = builder.finish(output).to(device=example_input.device)
        if check:
            _check_forward(model, graph, example_input)
    return graph


def _check_options(block_kind, max_pool, check, max_edges, max_bytes) -> None:
    if not isinstance(block_kind, str) or (block_kind != "auto" and block_kind not in general_kinds()):
        raise InputError(f"unknown block_kind {block_kind!r}; choose 'auto' or one of {general_kinds()}")
    if not isinstance(max_pool, str) or max_pool not in MAX_POOL_MODES:
        raise InputError(f"unknown max_pool mode {max_pool!r}; choose one of {MAX_POOL_MODES}")
    if not isinstance(check, bool):
        raise ArgumentTypeError(f"check must be True or False, got {type(check).__name__}")
    for name, limit in (("max_edges", max_edges), ("max_bytes", max_bytes)):
        if limit is None:
            continue
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise ArgumentTypeError(f"{name} must be an int or None, got {type(limit).__name__}")
        if limit < 0:
            raise InputError(f"{name} must be >= 0, got {limit}")


def _check_gates(gates: Mapping[str, int] | None) -> None:
    if gates is None:
        return
    if not isinstance(gates, Mapping):
        raise ArgumentTypeError(f"gates must be a mapping from product names to 0 or 1, got {type(gates).__name__}")
    for name, position in gates.items():
        if not isinstance(name, str) or isinstance(position, bool) or position not in (0, 1):
            raise InputError(f"gates must map product names (str) to the gate's operand position 0 or 1, "
                             f"got {name!r}: {position!r}")


def _check_model(model: nn.Module) -> None:
    """Refuse a non-module, and any module that does not compute per sample, before anything runs."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for path, module in model.named_modules():
        check_per_sample(path or type(module).__name__, module)


def _check_example(model: nn.Module, example_input: Tensor) -> None:
    if not isinstance(example_input, Tensor):
        raise ArgumentTypeError(
            f"example_input must be a torch.Tensor of shape (batch, ...), got {type(example_input).__name__}")
    if example_input.dim() < 2:
        raise InputError(f"example_input must be a batch of shape (batch, ...), got shape "
                         f"{tuple(example_input.shape)}; add a batch dimension with x.unsqueeze(0)")
    if example_input.shape[0] == 0:
        raise InputError(f"example_input is an empty batch (shape {tuple(example_input.shape)}); give at least one sample")
    if not example_input.is_floating_point():
        embedding = next((name for name, m in model.named_modules() if isinstance(m, nn.Embedding)), None)
        hint = "" if embedding is None else (
            f"; token ids looked up by nn.Embedding {embedding!r} have no edges: lower the model from the "
            "embedding output on, with graphlrp.embed giving its input")
        raise InputError(f"example_input must be floating point, got {example_input.dtype}{hint}")
    tensors = [*model.parameters(), *model.buffers()]
    dtypes = {t.dtype for t in tensors if t.is_floating_point()}
    if dtypes and dtypes != {example_input.dtype}:
        names = ", ".join(sorted(str(d) for d in dtypes))
        raise InputError(f"example_input has dtype {example_input.dtype}, the model's parameters {names}; "
                         "convert one to the other's dtype")
    devices = {t.device for t in tensors}
    if devices and devices != {example_input.device}:
        raise InputError(f"example_input is on {example_input.device}, the model on "
                         f"{', '.join(sorted(str(d) for d in devices))}; move one to the other's device")
    if not bool(torch.isfinite(example_input).all()):
        raise InputError("example_input contains NaN or inf; the lowering is checked on finite inputs only")


@contextmanager
def _state_preserved(model: nn.Module) -> Iterator[None]:
    """Every module's training flag and buffers as they were, after the block (returned or raised)."""
    flags = [(module, module.training) for module in model.modules()]
    buffers = [(module, name, tensor, tensor.detach().clone())
               for module in model.modules() for name, tensor in module._buffers.items() if tensor is not None]
    try:
        yield
    finally:
        for module, flag in flags:
            if module.training != flag:
                module.training = flag
        with torch.no_grad():
            for module, name, tensor, saved in buffers:
                if module._buffers.get(name) is not tensor:
                    module._buffers[name] = tensor
                if not torch.equal(tensor, saved):
                    tensor.copy_(saved)


def _check_size(builder: GraphBuilder, max_edges: int | None, max_bytes: int | None, device: torch.device) -> None:
    """Refuse a graph over ``max_edges`` or the memory budget: of the host, where it is built, and
    of ``device``, where it is moved."""
    nodes, edges, nbytes = builder.estimate()
    what = f"the graph ({nodes:,} nodes, {edges:,} edges)"
    if max_edges is not None and edges > max_edges:
        raise GraphTooLargeError(f"{what} has more edges than max_edges={max_edges:,}")
    check_budget(what, nbytes, max_bytes)
    if device.type != "cpu":
        check_budget(what, nbytes, max_bytes, device)


def _random_like(example_input: Tensor) -> Tensor:
    """The example's values shuffled, with random signs and scales in [0.5, 2): another input of its magnitude."""
    generator = torch.Generator().manual_seed(CHECK_SEED)
    flat = example_input.detach().reshape(-1).cpu()
    order = torch.randperm(flat.numel(), generator=generator)
    sign = torch.randint(0, 2, (flat.numel(),), generator=generator) * 2 - 1
    scale = 0.5 + 1.5 * torch.rand(flat.numel(), generator=generator, dtype=torch.float64)
    values = (flat[order].to(torch.float64) * sign * scale).to(flat.dtype)
    return values.reshape(example_input.shape).to(example_input.device)


def _run_model(model: nn.Module, x: Tensor, what: str) -> Tensor:
    """The model's output on a copy of ``x`` (``what`` names ``x`` in errors)."""
    try:
        with torch.no_grad():
            output = model(x.detach().clone())
    except Exception as error:  # the model's own code may raise anything
        raise LoweringMismatchError(
            f"the model raised {type(error).__name__} on {what}: {error}; the lowering cannot be checked") from None
    if not isinstance(output, Tensor):
        raise UnsupportedModuleError(f"the model must return one tensor, it returns {type(output).__name__}")
    return output


def _check_forward(model: nn.Module, graph: Graph, example_input: Tensor) -> None:
    expected = _run_model(model, example_input, "example_input")
    if not bool(torch.isfinite(expected).all()):
        raise InputError("the model's output on example_input is not finite (NaN or inf); pass an example input "
                         "of ordinary magnitude so that the lowering can be checked")
    _compare(graph(example_input.detach()), expected, "example_input")
    probe = _random_like(example_input)
    expected = _run_model(model, probe, "a random input of the example's shape")
    if bool(torch.isfinite(expected).all()):
        _compare(graph(probe), expected, "a random input of the example's shape and magnitude")


def _compare(actual: Tensor, expected: Tensor, what: str) -> None:
    if actual.shape != expected.shape:
        raise LoweringMismatchError(f"graph output has shape {tuple(actual.shape)}, model's {tuple(expected.shape)}")
    tolerance = 1e-4 if expected.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = expected.abs().max().clamp(min=1.0)
    error = (actual - expected).abs().max()
    if not bool(error <= tolerance * scale):
        raise LoweringMismatchError(
            f"the lowered graph's output differs from the model's by {float(error):.3g} on {what}; "
            "a module may compute something its type does not say (a custom forward)"
        )
