"""Attention block (CP-LRP): ``out = A · V`` with the softmax probabilities ``A`` held constant.

The source level is ``V`` and the context levels are ``Q`` and ``K``, all ``(T, H · d)``
token-major; ``A_h = softmax(Q_h K_hᵀ · scale)`` of every head is computed in the forward pass
and kept as the block's state ``(B, H, T, T)``. The edges ``v_(j, h, c) → o_(i, h, c)`` have the
per-sample weight ``A_(h, i, j)``; relevance flows only along them, ``Q`` and ``K`` receive none
through this block (Ali et al., 2022: conservative propagation). A causal block masks the keys
after each query (``A_(h, i, j) = 0`` for ``j > i``), as ``is_causal=True`` does.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..layout import in_layout_of
from ..transforms import Identity, Transform
from .base import EdgeRun, OperandCache, WeightFreeBlock, sample_edge_products


class AttentionBlock(WeightFreeBlock):
    """``o_(i, h) = Σ_j A_(h, i, j) v_(j, h)`` with ``A`` from the context levels ``(query, key)``.

    Parameters
    ----------
    src, dst : int
        The value level and the output level, ``(T, H · d)`` each.
    query, key : int
        The context levels ``Q`` and ``K``, ``(T, H · d)`` each.
    tokens, heads, head_dim : int
        ``T``, ``H`` and ``d``.
    scale : float
        Factor of the scores before the softmax (``1/√d`` in ``F.scaled_dot_product_attention``).
    causal : bool
        Query ``i`` attends to the keys ``j ≤ i`` only.
    dtype, device
        Of the probabilities the block computes.
    """

    kind = "attention"
    linear_forward = False
    #: an edge's weight is the sample's probability: its messages are summed sample by sample
    fixed_slot_weights = False

    def __init__(self, src: int, dst: int, query: int, key: int, tokens: int, heads: int, head_dim: int,
                 scale: float | None = None, causal: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        size = tokens * heads * head_dim
        super().__init__(src, dst, size, size, dtype, device)
        self.context = (query, key)
        self.tokens, self.heads, self.head_dim = tokens, heads, head_dim
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        self.causal = causal
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def num_edges(self) -> int:
        return self.heads * self.head_dim * self.tokens * self.tokens


    def _heads(self, v: Tensor) -> Tensor:
        """``(B, T · H · d)`` as ``(B, H, T, d)``."""
        return v.reshape(len(v), self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def _merged(self, v: Tensor) -> Tensor:
        """``(B, H, T, d)`` back to ``(B, T · H · d)``."""
        return v.transpose(1, 2).reshape(len(v), self.n_dst)

    def prepare(self, x: Tensor, query: Tensor, key: Tensor) -> Tensor:
        """The probabilities ``A (B, H, T, T)``, row ``i`` over the keys ``j``."""
        scores = (self._heads(query) @ self._heads(key).transpose(-1, -2)) * self.scale
        if self.causal:
            later = torch.ones(self.tokens, self.tokens, dtype=torch.bool, device=scores.device).triu_(1)
            scores = scores.masked_fill(later, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def select_state(self, state: Tensor, samples: Tensor) -> Tensor:
        return state.index_select(0, samples)

    def forward(self, x: Tensor, state: Tensor = None) -> Tensor:
        return self.matvec(x, Identity(), state)

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: Tensor = None,
               cache: OperandCache | None = None) -> Tensor:
        return in_layout_of(self._merged(transform(state) @ self._heads(x)), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: Tensor = None,
                cache: OperandCache | None = None) -> Tensor:
        return in_layout_of(self._merged(transform(state).transpose(-1, -2) @ self._heads(s)), s)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every ``(j, h, c) → (i, h, c)`` by head, output token, key token, then feature; weight 1
        (the sample's ``A_(h, i, j)`` is applied in :meth:`edge_messages`)."""
        if self._edges is None:
            h, i, j, c = torch.meshgrid(*(torch.arange(n, device=self.device) for n in
                                          (self.heads, self.tokens, self.tokens, self.head_dim)), indexing="ij")
            feature = h * self.head_dim + c
            width = self.heads * self.head_dim
            src, dst = (j * width + feature).reshape(-1), (i * width + feature).reshape(-1)
            self._edges = (src, dst, torch.ones(len(src), dtype=self.dtype, device=self.device))
        return self._edges

    @functools.cached_property
    def _edge_probability(self) -> Tensor:
        """Index of every edge's ``A_(h, i, j)`` in the flattened ``(H, T, T)`` state."""
        h, i, j, _ = torch.meshgrid(*(torch.arange(n, device=self.device) for n in
                                      (self.heads, self.tokens, self.tokens, self.head_dim)), indexing="ij")
        return ((h * self.tokens + i) * self.tokens + j).reshape(-1)

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: Tensor = None, out: Tensor | None = None
    ) -> Tensor:
        src, dst, _ = self.edges()
        weight = transform(state.reshape(len(state), -1).index_select(1, self._edge_probability))
        return sample_edge_products(x, src, weight, s, dst, out)

    def run_messages(self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform = Identity(),
                     state: Tensor = None) -> Tensor:
        """:meth:`edge_messages` of the run's edges, the sample's ``A_(h, i, j)`` their weights."""
        positions = self._edge_probability[run.start : run.start + len(run.src)]
        weight = transform(state.reshape(len(state), -1).index_select(1, positions))
        return sample_edge_products(x, run.src, weight, s, run.dst)

    def max_abs_weight(self) -> float:
        return 1.0  # probabilities

    def _to(self, device, dtype) -> "AttentionBlock":
        query, key = self.context
        return AttentionBlock(self.src, self.dst, query, key, self.tokens, self.heads, self.head_dim, self.scale,
                              self.causal, dtype or self.dtype, device if device is not None else self.device)
