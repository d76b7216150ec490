"""Which parameter of the user's model each block's weights and each level's biases are.

A graph lowered from a torch model names every level after the module it came from
(:attr:`graphlrp.Level.name`, the path of ``model.named_modules()``), so relevance is reported
under the names of ``model.named_parameters()``:

* ``nn.Linear``: ``"<path>.weight"`` ``(out, in)`` and ``"<path>.bias"`` ``(out,)``;
* ``nn.Conv1d/2d/3d``: ``"<path>.weight"`` shaped like the kernel (every weight's edges summed
  over the output positions) and ``"<path>.bias"`` ``(C_out,)``;
* a batch norm that is its own level: ``"<path>.weight"`` and ``"<path>.bias"`` ``(C,)``, its
  edges' and biases' relevance summed per channel;
* a batch norm folded into the layer before it: its share is in that layer's values (the folded
  weights ``W·scale`` carry the edges, the folded bias ``b·scale + shift`` the bias term), so
  ``"<layer>.bias"`` is present even when that layer has no bias of its own;
* a pruned layer: ``"<path>.weight"``, the effective weights (zero where pruned), not ``weight_orig``;
* a module used twice: the sum over both uses; functional layers (``F.linear``, ``F.conv2d``
  traced by ``torch.fx``): under the traced node's name;
* a per-token ``nn.Linear``: its weight's edges and its bias summed over the tokens;
* ``nn.LayerNorm`` and ``nn.RMSNorm`` (and ``F.layer_norm``, ``F.rms_norm`` with a weight):
  ``"<path>.weight"`` shaped like ``γ``, the messages of every edge into feature ``j`` (they
  share ``γ_j``) summed over the tokens and samples, and ``"<path>.bias"`` shaped like ``β``, its
  bias term's relevance summed over the tokens; a normalization without ``γ`` (or ``β``) reports
  none;
* ``nn.MultiheadAttention``: ``"<path>.in_proj_weight"`` ``(3E, E)`` and ``"<path>.in_proj_bias"``
  ``(3E,)`` (the ``q``, ``k``, ``v`` projections stacked as the module packs them; with ``kdim`` or
  ``vdim`` other than ``E``: ``"<path>.q_proj_weight"``, ``k_proj_weight``, ``v_proj_weight``), and
  ``"<path>.out_proj.weight"``, ``"<path>.out_proj.bias"``.

Pooling, activations, sums and copies have no parameters. Graphs not lowered from a model (edge
lists, networkx, NEAT) report per block, ``"blocks.<k>.weight"`` (per edge, in the block's edge
order), and per level, ``"levels.<i>.bias"`` ``(nodes,)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor

from ..graph import Graph, Level

#: string layer types of levels without parameters
STRUCTURAL = ("input", "copy", "sum", "attention", "attention_scores", "softmax", "constant")
#: the projections of an ``nn.MultiheadAttention``, in the order of its packed parameters
_PROJECTIONS = ("q", "k", "v")


@dataclass(frozen=True)
class Entry:
    """One named value: ``block`` (an index into ``graph.blocks``) or ``level`` (its biases)."""

    name: str
    block: int | None = None
    level: int | None = None
    per_channel: bool = False  # node values summed per channel (dimension 0 of the level's shape)
    per_edge: bool = False  # the block's values per edge, in its edge order
    part: int | None = None  # position in a parameter stacked from several blocks or levels (dimension 0)


def _learned(layer_type: object) -> bool:
    return isinstance(layer_type, type) and issubclass(
        layer_type, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm))


def _per_token(level: Level) -> bool:
    """Whether ``level`` is a linear layer's (its bias shared by the tokens of a sequence)."""
    return _is_projection(level) or (isinstance(level.layer_type, type) and issubclass(level.layer_type, nn.Linear))


def _is_norm(level: Level) -> bool:
    """Whether ``level`` is a layer or RMS normalization's (a ``layer_norm`` block)."""
    return isinstance(level.layer_type, type) and issubclass(level.layer_type, (nn.LayerNorm, nn.RMSNorm))


def _norm_shapes(graph: Graph) -> dict[int, tuple[int, ...]]:
    """The shape of ``γ`` and ``β`` of every normalization level (its block's normalized shape)."""
    return {block.dst: block.weight_shape or (block.features,) for block in graph.blocks
            if _is_norm(graph.levels[block.dst])}


def _is_projection(level: Level) -> bool:
    return level.layer_type is nn.MultiheadAttention


def _projection(level: Level) -> tuple[str, int]:
    """A ``MultiheadAttention`` projection level ``<path>:<q|k|v>``: the path and the role's position."""
    path, _, role = level.name.rpartition(":")
    return path, _PROJECTIONS.index(role)


def _packed(graph: Graph) -> dict[str, bool]:
    """For every ``MultiheadAttention`` path, whether its projections are packed (all square)."""
    packed: dict[str, bool] = {}
    for block in graph.blocks:
        level = graph.levels[block.dst]
        if _is_projection(level):
            path = _projection(level)[0]
            packed[path] = packed.get(path, True) and block.n_src == block.n_dst
    return packed


def entries(graph: Graph) -> list[Entry]:
    """The named values of ``graph``'s parameters, in graph order."""
    found: list[Entry] = []
    packed = _packed(graph)
    for position, block in enumerate(graph.blocks):
        level = graph.levels[block.dst]
        if _is_projection(level):
            path, part = _projection(level)
            name = f"{path}.in_proj_weight" if packed[path] else f"{path}.{_PROJECTIONS[part]}_proj_weight"
            found.append(Entry(name, block=position, part=part if packed[path] else None))
        elif _is_norm(level):
            if block.weight_shape is not None:
                found.append(Entry(f"{level.name}.weight", block=position))
        elif _learned(level.layer_type):
            is_norm = issubclass(level.layer_type, nn.modules.batchnorm._BatchNorm)
            found.append(Entry(f"{level.name}.weight", block=position, per_channel=is_norm))
        elif isinstance(level.layer_type, str) and level.layer_type not in STRUCTURAL:
            found.append(Entry(f"blocks.{position}.weight", block=position, per_edge=True))
    for level in graph.levels[1:]:
        if level.bias is None:
            continue
        if _is_projection(level):
            path, part = _projection(level)
            found.append(Entry(f"{path}.in_proj_bias", level=level.index, part=part))
        elif _is_norm(level):
            found.append(Entry(f"{level.name}.bias", level=level.index))
        elif _learned(level.layer_type):
            conv_or_norm = not issubclass(level.layer_type, nn.Linear)
            found.append(Entry(f"{level.name}.bias", level=level.index, per_channel=conv_or_norm))
        elif isinstance(level.layer_type, str) and level.layer_type not in STRUCTURAL:
            found.append(Entry(f"levels.{level.index}.bias", level=level.index))
    return found


def per_channel(values: Tensor, level: Level) -> Tensor:
    """Node values ``(..., nodes)`` of ``level`` summed per channel: ``(..., C)``."""
    return values.reshape(*values.shape[:-1], level.shape[0], -1).sum(-1)


def collect(graph: Graph, block_values: Callable[[int], Tensor], edge_values: Callable[[int], Tensor],
            level_values: Callable[[Level], Tensor]) -> dict[str, Tensor]:
    """``{name: values}``: ``block_values(k)`` shaped like block ``k``'s weight, ``edge_values(k)``
    per edge of block ``k``, ``level_values(level)`` per node; values of one name (a module used
    twice) are added."""
    named: dict[str, Tensor] = {}
    stacked: dict[str, dict[int, Tensor]] = {}
    norms = _norm_shapes(graph)
    for entry in entries(graph):
        if entry.per_edge:
            values = edge_values(entry.block)
        elif entry.block is not None:
            values = block_values(entry.block)
            if entry.per_channel:  # an element-wise block: one weight per node
                values = per_channel(values, graph.levels[graph.blocks[entry.block].dst])
        else:
            level = graph.levels[entry.level]
            values = level_values(level)
            if entry.per_channel:
                values = per_channel(values, level)
            elif level.index in norms:  # one bias per normalized element, shared by the tokens
                shape = norms[level.index]
                values = values.reshape(*values.shape[:-1], -1, math.prod(shape)).sum(-2)
                values = values.reshape(*values.shape[:-1], *shape)
            elif len(level.shape) > 1 and _per_token(level):  # one bias per feature, shared by the tokens
                values = values.reshape(*values.shape[:-1], -1, level.shape[-1]).sum(-2)
        if entry.part is not None:
            parts = stacked.setdefault(entry.name, {})
            parts[entry.part] = parts[entry.part] + values if entry.part in parts else values
            continue
        named[entry.name] = named[entry.name] + values if entry.name in named else values
    for name, parts in stacked.items():
        named[name] = torch.cat([parts[k] for k in sorted(parts)], dim=-2 if name.endswith("weight") else -1)
    return named
