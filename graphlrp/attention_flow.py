"""Per-head token-to-token relevance flow through the attention blocks of an explanation.

An attention block's edges ``v_(j, h, c) → o_(i, h, c)`` carry, per sample, the message of the
output token ``i`` to the value token ``j`` in head ``h`` and feature ``c``; summed over the
features they are the flow ``F_(h, i, j)``. Every row ``Σ_j F_(h, i, j)`` is the relevance of
token ``i``'s head-``h`` outputs that crossed the block (all of it with LRP-0), every column sum
the relevance its value token received. The flow is computed from the streamed edge messages
(:meth:`graphlrp.Explanation.message_runs`), never every edge at once, and can be listed as
token-level edges (:func:`flow_edges`) for a graph export.

On a graph lowered with ``attention="attnlrp"`` the flow is read from the edges
``v_(j, h, c) → o_(i, h, c)`` of the value operand of every ``P V`` product (a
:class:`~graphlrp.blocks.attnlrp.HeadProductBlock`): the relevance that reached the values through
the attention weights. The rest of the output's relevance went to the probabilities: the level
``path:probabilities`` holds it, ``(H, T, T)`` per sample, as the relevance of each attention
weight ``p_(h, i, j)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .blocks.attention import AttentionBlock
from .blocks.attnlrp import HeadProductBlock
from .errors import InputError
from .samples import Samples


def attention_blocks(graph) -> list[int]:
    """Positions in ``graph.blocks`` of the attention blocks, in graph order: CP-LRP's attention
    blocks and, on an AttnLRP graph, the value operands of the ``P V`` products."""
    return [k for k, block in enumerate(graph.blocks) if _flow_shape(block) is not None]


def _flow_shape(block) -> tuple[int, int, int, int] | None:
    """``(heads, queries, keys, features per head)`` of an attention block's edges, which run by
    head, query, key, then feature; ``None`` for any other block."""
    if isinstance(block, AttentionBlock):
        return block.heads, block.tokens, block.tokens, block.head_dim
    if isinstance(block, HeadProductBlock) and block.side == "right" and not block.left.token_major:
        return block.left.heads, block.left.rows, block.left.cols, block.right.cols
    return None


def attention_flow(explanation, block: int, sample: Samples = None) -> Tensor:
    """The relevance flow of attention block ``block`` (a position in ``graph.blocks``).

    Parameters
    ----------
    explanation : Explanation
        An explanation of a graph with attention blocks.
    block : int
        Position of an attention block in ``explanation.graph.blocks`` (see :func:`attention_blocks`).
    sample : int, sequence of int or None
        The samples, as in :meth:`~graphlrp.Explanation.edge_relevance` (``None``: all).

    Returns
    -------
    Tensor
        ``(samples, H, T, T)``: entry ``[b, h, i, j]`` is the relevance output token ``i`` sends
        to value token ``j`` through head ``h``.
    """
    blocks = explanation.graph.blocks
    shape = _flow_shape(blocks[block]) if 0 <= block < len(blocks) else None
    if shape is None:
        raise InputError(f"block {block} is not an attention block; the graph's attention blocks are "
                         f"{attention_blocks(explanation.graph)}")
    heads, queries, keys, features = shape
    first = sum(b.num_edges for b in blocks[:block])
    rows = explanation.sample_rows(sample)
    flow = explanation.node_relevance.new_zeros((len(rows), heads * queries * keys))
    for run in explanation.message_runs(rows, blocks=[block]):
        local = torch.arange(run.start - first, run.start - first + run.messages.shape[1], device=flow.device)
        flow.index_add_(1, local // features, run.messages)
    return flow.reshape(len(rows), heads, queries, keys)


def flow_edges(flow: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sample's flow ``(H, T, T)`` as token-level edges ``(head, src, dst, relevance)``, by
    head, then output token, then value token: an edge from output token ``src = i`` to value
    token ``dst = j`` per head (relevance flows from ``i`` to ``j``)."""
    if flow.dim() != 3 or flow.shape[1] != flow.shape[2]:
        raise InputError(f"flow_edges needs one sample's flow (heads, tokens, tokens); got {tuple(flow.shape)}")
    heads, tokens, _ = flow.shape
    head, i, j = torch.meshgrid(*(torch.arange(n, device=flow.device) for n in (heads, tokens, tokens)),
                                indexing="ij")
    return head.reshape(-1), i.reshape(-1), j.reshape(-1), flow.reshape(-1)
