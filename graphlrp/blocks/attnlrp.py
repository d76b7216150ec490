"""Blocks of AttnLRP's attention (Achtibat et al., 2024): bilinear products and the softmax.

``out = softmax(Q Kᵀ · scale) V`` per head becomes three levels after ``Q``, ``K`` and ``V``:
the scores ``S = Q Kᵀ · scale`` and the probabilities ``P = softmax(S)``, both ``(H, T, T)``
head-major, and the output ``O = P V``, ``(T, H · d)`` token-major like ``V``.

* :class:`HeadProductBlock`: one operand of a per-head product ``L R`` (``Q Kᵀ`` or ``P V``), the
  other operand a context level. Each product term ``l_mk r_kn`` is split equally between the two
  operands (the uniform rule): from ``L`` the edges ``l_mk → o_mn`` weigh ``r_kn / 2`` and from
  ``R`` the edges ``r_kn → o_mn`` weigh ``l_mk / 2``, so two blocks into one level sum to the
  product and a rule on that level sends half of every term's relevance to each operand.
* :class:`SoftmaxBlock`: ``S → P`` with the sample's Jacobian ``J_ij = p_i (δ_ij − p_j)`` of every
  head and query row as edge weights (a dense ``T × T`` block per row);
* :class:`SoftmaxRemainderBlock`: from a constant node of value 1 to ``P``, weighing the remainder
  ``b = p − J s`` of the softmax's first-order Taylor expansion at ``s``. With it the level's
  denominator is ``p`` itself and LRP-0 on ``P`` is Proposition 3.1,
  ``R_s = s ⊙ (R_p − p Σ R_p)``; the remainder's share ends on the constant node (its bias).

Every weight is a value of the sample (``fixed_slot_weights`` is False); the edges are listed with
weight 1, the sample's weight applied to their messages.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from ..layout import in_layout_of
from ..transforms import Identity, Transform
from .base import EdgeRun, OperandCache, WeightFreeBlock, sample_edge_products


@dataclass(frozen=True)
class HeadMatrices:
    """How a level holds one ``rows × cols`` matrix per head.

    Attributes
    ----------
    heads, rows, cols : int
        ``H`` and the matrix's shape as the product uses it.
    token_major : bool
        The level is ``(tokens, H · features)`` token-major (``Q``, ``K``, ``V``, ``O``), else
        ``(H, rows, cols)`` head-major (scores, probabilities).
    transposed : bool
        The matrix is the transpose of the one the level holds (``Kᵀ`` of the level ``K``).
    """

    heads: int
    rows: int
    cols: int
    token_major: bool
    transposed: bool = False

    @property
    def size(self) -> int:
        return self.heads * self.rows * self.cols

    def _held(self) -> tuple[int, int]:
        return (self.cols, self.rows) if self.transposed else (self.rows, self.cols)

    def view(self, v: Tensor) -> Tensor:
        """``v (B, size)`` as ``(B, H, rows, cols)``."""
        held_rows, held_cols = self._held()
        if self.token_major:
            m = v.reshape(len(v), held_rows, self.heads, held_cols).transpose(1, 2)
        else:
            m = v.reshape(len(v), self.heads, held_rows, held_cols)
        return m.transpose(-1, -2) if self.transposed else m

    def flat(self, m: Tensor) -> Tensor:
        """``(B, H, rows, cols)`` back to the level's ``(B, size)``."""
        if self.transposed:
            m = m.transpose(-1, -2)
        if self.token_major:
            m = m.transpose(1, 2)
        return m.reshape(len(m), self.size)

    def nodes(self, device: torch.device) -> Tensor:
        """The level's node of every matrix entry, ``(H, rows, cols)``."""
        return self.view(torch.arange(self.size, device=device)[None])[0]


def probabilities(scores: Tensor, causal: bool) -> Tensor:
    """``softmax`` over the last dimension of ``scores (B, H, T, T)``; ``causal`` masks the keys
    after each query."""
    if causal:
        tokens = scores.shape[-1]
        later = torch.ones(tokens, tokens, dtype=torch.bool, device=scores.device).triu_(1)
        scores = scores.masked_fill(later, float("-inf"))
    return torch.softmax(scores, dim=-1)


class _SampleWeighted(WeightFreeBlock):
    """Shared parts of the blocks here: per-sample weights as the state, no weights held."""

    linear_forward = False
    #: an edge's weight is a value of the sample: its messages are summed sample by sample
    fixed_slot_weights = False

    def select_state(self, state: Tensor, samples: Tensor) -> Tensor:
        return state.index_select(0, samples)

    def forward(self, x: Tensor, state: Tensor = None) -> Tensor:
        return self.matvec(x, Identity(), state)

    def max_abs_weight(self) -> float:
        return 1.0  # the weights are values of the sample, known per sample only

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: Tensor = None, out: Tensor | None = None
    ) -> Tensor:
        src, dst, _ = self.edges()
        return sample_edge_products(x, src, transform(self._edge_weights(state, src, dst, 0)), s, dst, out)

    def run_messages(self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform = Identity(),
                     state: Tensor = None) -> Tensor:
        """:meth:`edge_messages` of the run's edges, weighed by the sample's values."""
        weights = transform(self._edge_weights(state, run.src, run.dst, run.start))
        return sample_edge_products(x, run.src, weights, s, run.dst)

    def _edge_weights(self, state: Tensor, src: Tensor, dst: Tensor, start: int) -> Tensor:
        """The sample's weight ``(B, E)`` of the edges ``src → dst`` at positions ``start ..`` of the edge order."""
        raise NotImplementedError

    def _ones(self, n: int) -> Tensor:
        return torch.ones(n, dtype=self.dtype, device=self.device)


class HeadProductBlock(_SampleWeighted):
    """One operand of ``out_h = factor · L_h R_h`` per head, the other operand a context level.

    Parameters
    ----------
    src, dst : int
        The operand's level and the product's level.
    other : int
        The other operand's level (context: it receives no relevance through this block).
    left, right, out : HeadMatrices
        How the levels of ``L``, ``R`` and the product hold their matrices.
    side : {'left', 'right'}
        Which operand ``src`` is.
    factor : float
        Scales every edge weight: ``1/2`` for the uniform rule (``scale / 2`` for the scores).
    dtype, device
        Of the weights the block reads from the sample.
    """

    kind = "head_product"

    def __init__(self, src: int, dst: int, other: int, left: HeadMatrices, right: HeadMatrices, out: HeadMatrices,
                 side: str, factor: float, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        own, theirs = (left, right) if side == "left" else (right, left)
        super().__init__(src, dst, own.size, out.size, dtype, device)
        self.context = (other,)
        self.left, self.right, self.out = left, right, out
        self.side, self.factor = side, float(factor)
        self._theirs = theirs
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def num_edges(self) -> int:
        return self.left.heads * self.left.rows * self.left.cols * self.right.cols

    def prepare(self, x: Tensor, other: Tensor) -> Tensor:
        """The other operand's values times :attr:`factor`, ``(B, n_other)``: the edges' weights."""
        return other * self.factor

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: Tensor = None,
               cache: OperandCache | None = None) -> Tensor:
        weights = transform(self._theirs.view(state))
        if self.side == "left":
            product = self.left.view(x) @ weights
        else:
            product = weights @ self.right.view(x)
        return in_layout_of(self.out.flat(product), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: Tensor = None,
                cache: OperandCache | None = None) -> Tensor:
        weights = transform(self._theirs.view(state))
        if self.side == "left":
            back = self.left.flat(self.out.view(s) @ weights.transpose(-1, -2))
        else:
            back = self.right.flat(weights.transpose(-1, -2) @ self.out.view(s))
        return in_layout_of(back, s)

    def _grid(self) -> tuple[Tensor, Tensor, Tensor]:
        """Nodes of ``L``, ``R`` and the product for every term ``(h, m, k, n)``, flattened in that order."""
        h, m, k, n = torch.meshgrid(*(torch.arange(size, device=self.device) for size in
                                      (self.left.heads, self.left.rows, self.left.cols, self.right.cols)),
                                    indexing="ij")
        left, right, out = (layout.nodes(self.device) for layout in (self.left, self.right, self.out))
        return left[h, m, k].reshape(-1), right[h, k, n].reshape(-1), out[h, m, n].reshape(-1)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """One edge per product term ``l_mk r_kn`` of every head, by head, ``m``, ``k``, then ``n``;
        weight 1 (the sample's other operand is applied in :meth:`edge_messages`)."""
        if self._edges is None:
            left, right, out = self._grid()
            src = left if self.side == "left" else right
            self._edges = (src, out, self._ones(len(src)))
        return self._edges

    @functools.cached_property
    def _weight_nodes(self) -> Tensor:
        """The other operand's node that weighs every edge, in edge order."""
        left, right, _ = self._grid()
        return right if self.side == "left" else left

    def _edge_weights(self, state: Tensor, src: Tensor, dst: Tensor, start: int) -> Tensor:
        return state.index_select(1, self._weight_nodes[start : start + len(src)])

    def _to(self, device, dtype) -> "HeadProductBlock":
        return HeadProductBlock(self.src, self.dst, self.context[0], self.left, self.right, self.out, self.side,
                                self.factor, dtype or self.dtype, device if device is not None else self.device)


class SoftmaxBlock(_SampleWeighted):
    """``s → p = softmax(s)`` over every row of ``(H, T, T)`` scores, the sample's Jacobian its edges.

    Parameters
    ----------
    src, dst : int
        The scores' and the probabilities' levels, ``(H, T, T)`` head-major each.
    heads, tokens : int
        ``H`` and ``T``.
    causal : bool
        Query ``i`` attends to the keys ``j ≤ i`` only (the others have probability 0, and so
        Jacobian 0).
    dtype, device
        Of the probabilities the block computes.

    Notes
    -----
    The state is ``p (B, H, T, T)``. In row ``(h, i)`` the edge ``s_j → p_k`` weighs
    ``J_kj = p_k (δ_kj − p_j)``: its product with the scores is the linear part of the Taylor
    expansion at the sample, ``J s``, not ``p``; :class:`SoftmaxRemainderBlock` adds the rest.
    The identity transform reduces without forming ``J``; any other transform works on the
    ``T × T`` Jacobian of every row and sample.
    """

    kind = "softmax"

    def __init__(self, src: int, dst: int, heads: int, tokens: int, causal: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        size = heads * tokens * tokens
        super().__init__(src, dst, size, size, dtype, device)
        self.heads, self.tokens, self.causal = heads, tokens, causal
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def num_edges(self) -> int:
        return self.heads * self.tokens ** 3

    def _rows(self, v: Tensor) -> Tensor:
        return v.reshape(len(v), self.heads, self.tokens, self.tokens)

    def prepare(self, x: Tensor) -> Tensor:
        """The probabilities ``p (B, H, T, T)``."""
        return probabilities(self._rows(x), self.causal)

    def _jacobians(self, transform: Transform, p: Tensor) -> Tensor:
        """``f(J)`` of every row, ``(B, H, T, T_out, T_in)``."""
        eye = torch.eye(self.tokens, dtype=p.dtype, device=p.device)
        return transform(p[..., :, None] * (eye - p[..., None, :]))

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: Tensor = None,
               cache: OperandCache | None = None) -> Tensor:
        rows = self._rows(x)
        if isinstance(transform, Identity):
            out = state * (rows - (state * rows).sum(-1, keepdim=True))
        else:
            out = torch.einsum("bhikj,bhij->bhik", self._jacobians(transform, state), rows)
        return in_layout_of(out.reshape(len(x), self.n_dst), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: Tensor = None,
                cache: OperandCache | None = None) -> Tensor:
        rows = self._rows(s)
        if isinstance(transform, Identity):  # J is symmetric
            back = state * (rows - (state * rows).sum(-1, keepdim=True))
        else:
            back = torch.einsum("bhikj,bhik->bhij", self._jacobians(transform, state), rows)
        return in_layout_of(back.reshape(len(s), self.n_src), s)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every ``s_(h, i, j) → p_(h, i, k)`` by head, row ``i``, destination ``k``, then source ``j``;
        weight 1 (the sample's ``J_kj`` is applied in :meth:`edge_messages`)."""
        if self._edges is None:
            row = torch.arange(self.heads * self.tokens, device=self.device)[:, None, None] * self.tokens
            k, j = torch.meshgrid(*(torch.arange(self.tokens, device=self.device),) * 2, indexing="ij")
            src, dst = (row + j).reshape(-1), (row + k).reshape(-1)
            self._edges = (src, dst, self._ones(len(src)))
        return self._edges

    def _edge_weights(self, state: Tensor, src: Tensor, dst: Tensor, start: int) -> Tensor:
        p = state.reshape(len(state), -1)
        return p.index_select(1, dst) * ((src == dst).to(p.dtype) - p.index_select(1, src))

    def _to(self, device, dtype) -> "SoftmaxBlock":
        return SoftmaxBlock(self.src, self.dst, self.heads, self.tokens, self.causal, dtype or self.dtype,
                            device if device is not None else self.device)


class SoftmaxRemainderBlock(_SampleWeighted):
    """From a constant node (value 1) to the probabilities: the remainder ``b = p − J s`` of the
    softmax's Taylor expansion at the sample, so that the level is ``J s + b = p``.

    Parameters
    ----------
    src : int
        A level of one node, constant 1 (no incoming edges, bias 1).
    dst : int
        The probabilities' level.
    scores : int
        The scores' level (context).
    heads, tokens : int
        ``H`` and ``T``.
    causal : bool
        As the :class:`SoftmaxBlock` into the same level.
    dtype, device
        Of the remainders the block computes.
    """

    kind = "softmax_remainder"

    def __init__(self, src: int, dst: int, scores: int, heads: int, tokens: int, causal: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__(src, dst, 1, heads * tokens * tokens, dtype, device)
        self.context = (scores,)
        self.heads, self.tokens, self.causal = heads, tokens, causal

    @property
    def num_edges(self) -> int:
        return self.n_dst

    def prepare(self, x: Tensor, scores: Tensor) -> Tensor:
        """``b = p ⊙ (1 − s + Σ_j p_j s_j)`` of every row, ``(B, n_dst)``."""
        s = scores.reshape(len(scores), self.heads, self.tokens, self.tokens)
        p = probabilities(s, self.causal)
        linear = p * (s - (p * s).sum(-1, keepdim=True))
        return (p - linear).reshape(len(scores), self.n_dst)

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: Tensor = None,
               cache: OperandCache | None = None) -> Tensor:
        return in_layout_of(x.reshape(len(x), 1) * transform(state), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: Tensor = None,
                cache: OperandCache | None = None) -> Tensor:
        return in_layout_of((s * transform(state)).sum(1, keepdim=True), s)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """The constant node to every probability; weight 1 (the sample's remainder is applied in
        :meth:`edge_messages`)."""
        dst = torch.arange(self.n_dst, device=self.device)
        return torch.zeros_like(dst), dst, self._ones(self.n_dst)

    def _edge_weights(self, state: Tensor, src: Tensor, dst: Tensor, start: int) -> Tensor:
        return state.index_select(1, dst)

    def _to(self, device, dtype) -> "SoftmaxRemainderBlock":
        return SoftmaxRemainderBlock(self.src, self.dst, self.context[0], self.heads, self.tokens, self.causal,
                                     dtype or self.dtype, device if device is not None else self.device)
