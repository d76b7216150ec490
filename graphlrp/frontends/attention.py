"""Lowering attention: ``F.scaled_dot_product_attention`` and ``nn.MultiheadAttention``.

Both become an attention block (:meth:`GraphBuilder.attention`, CP-LRP: the softmax probabilities
held constant, ``Q`` and ``K`` context levels without relevance):

* ``F.scaled_dot_product_attention(q, k, v)`` on per-sample shapes ``(H, T, d)`` or ``(T, d)``:
  the heads moved next to each token's features (a renumbering), the block, and the result moved
  back; ``is_causal`` and ``scale`` are handled, ``attn_mask``, ``dropout_p > 0`` and
  ``enable_gqa`` are refused by name;
* ``nn.MultiheadAttention`` on ``(T, E)`` per sample: its packed ``in_proj_weight``
  split into three per-token Linears ``q``, ``k``, ``v`` (or its ``q/k/v_proj_weight`` when
  ``kdim``/``vdim`` differ), the block over the heads, and ``out_proj`` as a per-token Linear. Its
  tuple output is ``(output, weights)``; the weights cannot be used (``need_weights`` is refused
  when they are read). With ``batch_first=False`` its inputs are ``(T, B, E)`` tensors whose batch
  a transpose or permute moved to dimension 1 (:class:`~graphlrp.frontends.fx_ops.BatchMoved`):
  the same blocks, its output in that layout too, so that moving the batch back to dimension 0 is
  again a renumbering. ``key_padding_mask``, ``attn_mask``, ``is_causal``, ``add_bias_kv`` and
  ``add_zero_attn`` are refused by name.

The levels of a ``MultiheadAttention`` at ``path`` are ``path:q``, ``path:k``, ``path:v`` (of
layer type ``nn.MultiheadAttention``), ``path`` (the attention) and ``path.out_proj``, so that
per-parameter relevance is reported under the module's own parameter names
(:mod:`graphlrp.aggregation.parameters`).
"""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from ..errors import InputError, UnsupportedModuleError
from .builder import Value
from .fx_ops import BatchMoved, NotATensor, where
from .modules import effective_parameter

#: the walker of :mod:`graphlrp.frontends.fx` (not imported, as it imports this module)
Walker = Any

#: the projections of a ``MultiheadAttention``, in the order of its packed ``in_proj_weight``
ROLES = ("q", "k", "v")

_SDPA_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_MHA_PARAMETERS = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask", "average_attn_weights",
                   "is_causal")


def _computed(walker: Walker, node: torch.fx.Node, arguments: dict[str, Any], name: str) -> Value:
    value = arguments.get(name)
    if not isinstance(value, Value):
        raise UnsupportedModuleError(f"the {name} of {where(node)} must be a tensor computed from the input")
    return value


def _refuse_set(node: torch.fx.Node, arguments: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Refuse every argument in ``defaults`` that is given with another value than its default."""
    for name, default in defaults.items():
        given = arguments.get(name, default)
        if given is not default and given != default:
            raise UnsupportedModuleError(f"{name}={_shown(given)} is not supported at {where(node)} (only "
                                         f"{default!r})")


def _shown(value: Any) -> str:
    return "a tensor" if isinstance(value, (Value, torch.Tensor, NotATensor)) else repr(value)


def scaled_dot_product_attention(walker: Walker, node: torch.fx.Node) -> Value:
    """``F.scaled_dot_product_attention`` on ``(H, T, d)`` or ``(T, d)`` per sample."""
    arguments = walker._kwargs(node, _SDPA_PARAMETERS)
    _refuse_set(node, arguments, {"attn_mask": None, "dropout_p": 0.0, "enable_gqa": False})
    query, key, value = (_computed(walker, node, arguments, name) for name in ("query", "key", "value"))
    if not query.shape == key.shape == value.shape or len(value.shape) not in (2, 3):
        raise UnsupportedModuleError(f"scaled_dot_product_attention at {where(node)} needs query, key and value "
                                     f"of one shape (heads, tokens, features) or (tokens, features); they have "
                                     f"shapes {query.shape}, {key.shape}, {value.shape}")
    builder = walker.builder
    if len(value.shape) == 2:
        merged = [query, key, value]
        heads = 1
    else:
        heads, tokens, head_dim = value.shape
        merged = [builder.reshape(builder.permute(v, (1, 0, 2)), (tokens, heads * head_dim))
                  for v in (query, key, value)]
    out = builder.attention(node.name, *merged, heads=heads, scale=arguments.get("scale"),
                            causal=bool(arguments.get("is_causal", False)))
    if len(value.shape) == 2:
        return out
    return builder.permute(builder.reshape(out, (tokens, heads, head_dim)), (1, 0, 2))


def _in_layout(node: torch.fx.Node, arguments: dict[str, Any], kind: str, batch_first: bool) -> list[Value]:
    """The query, key and value with the batch in front: as given (``batch_first``), or the
    ``(T, B, E)`` tensors of ``batch_first=False`` (:class:`BatchMoved`, batch in dimension 1)."""
    inputs = []
    for name in ("query", "key", "value"):
        given = arguments.get(name)
        if batch_first and isinstance(given, BatchMoved):
            raise UnsupportedModuleError(f"{kind} has batch_first=True, but its {name} has the batch in dimension "
                                         f"{given.dim} at {where(node)}")
        if not batch_first:
            if not isinstance(given, BatchMoved) or given.dim != 1:
                found = f"dimension {given.dim}" if isinstance(given, BatchMoved) else "dimension 0"
                raise UnsupportedModuleError(f"{kind} has batch_first=False: its {name} must have the batch in "
                                             f"dimension 1, (tokens, batch, features), e.g. x.transpose(0, 1); it "
                                             f"has it in {found} at {where(node)}")
            given = given.value
        inputs.append(given)
    for name, value in zip(("query", "key", "value"), inputs):
        if not isinstance(value, Value):
            raise UnsupportedModuleError(f"the {name} of {where(node)} must be a tensor computed from the input")
    return inputs


def multihead_attention(walker: Walker, node: torch.fx.Node, path: str, module: nn.MultiheadAttention) -> tuple:
    """``nn.MultiheadAttention``: ``(output, None)``, see the module docstring."""
    arguments = walker._kwargs(node, _MHA_PARAMETERS)
    kind = f"{path} (MultiheadAttention)"
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedModuleError(f"{kind}: add_bias_kv=True and add_zero_attn=True are not supported")
    if module.training and module.dropout > 0:
        raise InputError(f"{kind} is in training mode with dropout={module.dropout}; call model.eval() first")
    _refuse_set(node, arguments, {"key_padding_mask": None, "attn_mask": None, "is_causal": False})
    if arguments.get("need_weights", True) and _weights_read(node):
        raise UnsupportedModuleError(f"{kind}: its attention weights (output [1]) are read at {where(node)}; only "
                                     "the output [0] can be lowered")
    inputs = _in_layout(node, arguments, kind, module.batch_first)
    if any(len(v.shape) != 2 for v in inputs):
        raise UnsupportedModuleError(f"{kind} needs inputs of shape (tokens, features) per sample; they have shapes "
                                     f"{[v.shape for v in inputs]}")
    builder = walker.builder
    weights = _projection_weights(module)
    bias = effective_parameter(module, "in_proj_bias")
    biases = bias.chunk(3) if bias is not None else (None,) * 3
    projected = [builder.linear(f"{path}:{role}", nn.MultiheadAttention, value, weight, part)
                 for role, value, weight, part in zip(ROLES, inputs, weights, biases)]
    attended = builder.attention(path, *projected, heads=module.num_heads)
    out_proj = module.out_proj
    output = builder.linear(f"{path}.out_proj", type(out_proj), attended, effective_parameter(out_proj, "weight"),
                            effective_parameter(out_proj, "bias"))
    return (output if module.batch_first else BatchMoved(output, 1)), NotATensor()


def _projection_weights(module: nn.MultiheadAttention) -> tuple[torch.Tensor, ...]:
    if module._qkv_same_embed_dim:
        return effective_parameter(module, "in_proj_weight").chunk(3)
    return tuple(effective_parameter(module, f"{role}_proj_weight") for role in ROLES)


def _weights_read(node: torch.fx.Node) -> bool:
    """Whether anything reads output ``[1]`` (the attention weights) of the module call ``node``."""
    for user in node.users:
        if user.op != "call_function" or user.target is not operator.getitem:
            return True  # the tuple itself is used
        if user.args[1] != 0 and user.users:
            return True
    return False


#: modules lowered from all their arguments (not one input), by type
MODULE_LOWERINGS = {nn.MultiheadAttention: multihead_attention}


def module_lowering(module: nn.Module):
    """The lowering of a module called with several inputs, or ``None``."""
    return next((lowering for kind, lowering in MODULE_LOWERINGS.items() if isinstance(module, kind)), None)
