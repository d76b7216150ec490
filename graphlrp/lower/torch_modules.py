"""Lowering ``torch.nn`` modules: ``nn.Sequential`` (nested) of dense layers and element-wise functions."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
import torch.nn as nn
from torch import Tensor

from ..activations import Activation, compose
from ..blocks import BLOCK_KINDS, Block, block_from_matrix
from ..errors import LoweringMismatchError, UnsupportedModuleError
from ..graph import Graph, Level

#: element-wise activation modules; relevance passes through them unchanged
ELEMENTWISE_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Tanhshrink, nn.LogSigmoid,
)
#: modules that leave values and node order unchanged
PASSTHROUGH_TYPES: tuple[type, ...] = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.AlphaDropout)
#: modules that reshape without reordering nodes
RESHAPE_TYPES: tuple[type, ...] = (nn.Flatten, nn.Unflatten)
SUPPORTED_TYPES: tuple[type, ...] = (nn.Sequential, nn.Linear, *RESHAPE_TYPES, *PASSTHROUGH_TYPES, *ELEMENTWISE_TYPES)

#: density (nonzero weights / weights) at or below which a layer's edges are held sparse (CSR).
#: Measured: CSR matmul beats dense below ~10% density at batch 1 and ~35% at batch 64.
SPARSE_DENSITY = 0.2


def effective_parameter(module: nn.Module, name: str) -> Tensor | None:
    """The parameter ``name`` as the module uses it: ``<name>_orig * <name>_mask`` when pruned.

    ``torch.nn.utils.prune`` keeps the trained values in ``weight_orig`` and the mask in
    ``weight_mask``, and recomputes ``weight`` only in a forward pre-hook; reading the product
    gives the effective weights even when ``weight`` is stale.
    """
    with torch.no_grad():
        original = getattr(module, f"{name}_orig", None)
        mask = getattr(module, f"{name}_mask", None)
        if isinstance(original, Tensor) and isinstance(mask, Tensor):
            return (original * mask).detach().clone()
        value = getattr(module, name, None)
        return None if value is None else value.detach().clone()


def _supported_list() -> str:
    return ", ".join(sorted({t.__name__ for t in SUPPORTED_TYPES}))


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}" if path else name)
    else:
        yield path or type(module).__name__, module


@dataclass
class _Builder:
    """Levels and blocks under construction."""

    block_kind: str
    levels: list[Level] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    shape: tuple[int, ...] = ()  # shape the next module receives (per sample)

    def add_input(self, shape: tuple[int, ...]) -> None:
        self.levels.append(Level(0, "input", "input", shape, 0))
        self.shape = shape

    def add_linear(self, path: str, module: nn.Linear) -> None:
        if len(self.shape) != 1 or self.shape[0] != module.in_features:
            hint = " — insert nn.Flatten() before it" if len(self.shape) > 1 else ""
            raise ValueError(f"{path} ({type(module).__name__}) expects {module.in_features} features per sample, "
                             f"receives shape {self.shape}{hint}")
        weight = effective_parameter(module, "weight")
        bias = effective_parameter(module, "bias")
        previous = self.levels[-1]
        level = Level(len(self.levels), path, type(module), (module.out_features,), previous.offset + previous.size,
                      bias=bias)
        self.levels.append(level)
        self.blocks.append(block_from_matrix(_choose_kind(self.block_kind, weight), previous.index, level.index, weight))
        self.shape = level.shape

    def add_activation(self, path: str, module: nn.Module) -> None:
        last = self.levels[-1]
        self.levels[-1] = replace(last, activation=compose(last.activation, Activation(type(module).__name__, module)))

    def add_reshape(self, path: str, module: nn.Module) -> None:
        probe = torch.zeros((1, *self.shape))
        try:
            self.shape = tuple(module(probe).shape[1:])
        except RuntimeError as error:
            raise ValueError(f"{path} ({type(module).__name__}) cannot reshape {self.shape}: {error}") from None


def _choose_kind(block_kind: str, weight: Tensor) -> str:
    if block_kind != "auto":
        return block_kind
    density = float(torch.count_nonzero(weight)) / max(1, weight.numel())
    return "sparse" if density <= SPARSE_DENSITY else "dense"


def lower(
    model: nn.Module,
    example_input: Tensor,
    block_kind: str = "auto",
    check: bool = True,
) -> Graph:
    """Lower a torch network to a :class:`~graphlrp.Graph` of neurons and weighted edges.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` (nested ones too) of ``nn.Linear``, element-wise activations,
        ``nn.Flatten``/``nn.Unflatten``, ``nn.Identity`` and ``nn.Dropout`` (in eval mode), or one
        such module. Pruned layers (``torch.nn.utils.prune``) are lowered with their effective
        weights; zero weights produce no edge. The model is read, never modified or copied.
    example_input : Tensor
        A batch ``(B, ...)`` of inputs; fixes the input shape and checks the lowering.
    block_kind : {'auto', 'dense', 'sparse', 'edges'}
        How edges are held: ``'auto'`` chooses per layer by density (sparse CSR at or below
        ``SPARSE_DENSITY``, else a dense matrix).
    check : bool
        Compare the graph's forward with ``model(example_input)`` and raise
        :class:`~graphlrp.errors.LoweringMismatchError` if they differ.

    Returns
    -------
    Graph
    """
    if block_kind != "auto" and block_kind not in BLOCK_KINDS:
        raise ValueError(f"unknown block_kind {block_kind!r}; choose 'auto' or one of {BLOCK_KINDS}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batch: a tensor of shape (batch, ...)")
    builder = _Builder(block_kind)
    builder.add_input(tuple(example_input.shape[1:]))
    for path, module in _leaves(model, ""):
        if isinstance(module, nn.Linear):
            builder.add_linear(path, module)
        elif isinstance(module, ELEMENTWISE_TYPES):
            builder.add_activation(path, module)
        elif isinstance(module, RESHAPE_TYPES):
            builder.add_reshape(path, module)
        elif isinstance(module, PASSTHROUGH_TYPES):
            if module.training and not isinstance(module, nn.Identity):
                raise ValueError(f"{path} ({type(module).__name__}) is in training mode; call model.eval() first")
        else:
            raise UnsupportedModuleError(
                f"cannot lower module {path!r} of type {type(module).__module__}.{type(module).__name__}; "
                f"supported: {_supported_list()}"
            )
    graph = Graph(builder.levels, builder.blocks)
    graph = graph.to(device=example_input.device)
    if check:
        _check_forward(model, graph, example_input)
    return graph


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
