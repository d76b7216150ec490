"""Blocks over sequences of tokens: a level of shape ``(T, F)``, token-major (``t · F + f``).

* :class:`TokenLinearBlock`: one ``nn.Linear`` applied to every token, its weight shared by the
  tokens (a 1×1 convolution over the token axis);
* :class:`LayerNormBlock`: layer normalization over each token's features with the rule of
  AttnLRP (Achtibat et al., 2024): the standard deviation ``σ`` is held constant per sample and
  token, so the normalization is linear in its input, ``y_j = Σ_i (δ_ij − 1/n) γ_j / σ · x_i + β_j``.
  Its edges are the ``n × n`` pairs of each token with the static weight ``(δ_ij − 1/n) γ_j``; the
  per-sample factor ``1/σ`` is the block's state. RMS normalization (``center=False``) has the
  edges ``δ_ij γ_j / σ`` only.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor

from ..layout import in_layout_of
from ..transforms import Identity, Transform
from .base import Block, EdgeRun, OperandCache, StaticBlock, sample_edge_products


def _tokens(v: Tensor, features: int) -> Tensor:
    """``v (B, T·F)`` as ``(B, T, F)`` (a copy only if ``v`` is node-major)."""
    return v.reshape(len(v), -1, features)


class TokenLinearBlock(StaticBlock):
    """``y_t = W x_t`` for every token ``t``: edges ``(t, i) → (t, j)`` of weight ``W[j, i]``.

    Parameters
    ----------
    src, dst : int
        Source and destination level indices.
    weight : Tensor
        ``(out_features, in_features)``, shared by the tokens.
    tokens : int
        Number of tokens ``T`` (every leading dimension of a sample flattened).
    """

    kind = "token_linear"
    operand_layout = "batch"

    def __init__(self, src: int, dst: int, weight: Tensor, tokens: int) -> None:
        out_features, in_features = weight.shape
        super().__init__(src, dst, n_src=tokens * in_features, n_dst=tokens * out_features)
        self.weight = weight
        self.tokens = tokens
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @functools.cached_property
    def num_edges(self) -> int:
        return self.tokens * int(torch.count_nonzero(self.weight))

    def held(self) -> tuple[Tensor, ...]:
        return (self.weight,)

    def _transformed(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def _matvec(self, x: Tensor, operand: Tensor) -> Tensor:
        return (_tokens(x, operand.shape[1]) @ operand.T).reshape(len(x), self.n_dst)

    def _rmatvec(self, s: Tensor, operand: Tensor) -> Tensor:
        return (_tokens(s, operand.shape[0]) @ operand).reshape(len(s), self.n_src)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Token by token, each token's edges by destination feature, then source feature."""
        if self._edges is None:
            out_features, in_features = self.weight.shape
            j, i = torch.nonzero(self.weight, as_tuple=True)
            token = torch.arange(self.tokens, device=self.weight.device)[:, None]
            src = (token * in_features + i).reshape(-1)
            dst = (token * out_features + j).reshape(-1)
            self._edges = (src, dst, self.weight[j, i].repeat(self.tokens))
        return self._edges

    # -- sums over samples: one slot per weight, summed over the tokens -------------------------
    @property
    def sum_shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)

    def add_message_sums(self, out: Tensor, x: Tensor, s: Tensor, alpha: float = 1.0, state: object = None) -> None:
        """``out[j, i] += alpha · Σ_b Σ_t s_b,(t, j) x_b,(t, i)``."""
        out_features, in_features = self.weight.shape
        quotients = _tokens(s, out_features).reshape(-1, out_features)
        inputs = _tokens(x, in_features).reshape(-1, in_features)
        out.add_((quotients.T @ inputs).to(out.dtype), alpha=alpha)

    def edge_slots(self) -> Tensor:
        out_features, in_features = self.weight.shape
        j, i = torch.nonzero(self.weight, as_tuple=True)
        return (j * in_features + i).repeat(self.tokens)

    def slot_weights(self, transform: Transform) -> Tensor:
        return transform(self.weight)

    def weight_sums(self, values: Tensor) -> Tensor:
        """Already shaped like the layer's weight ``(out_features, in_features)``."""
        return values

    def _to(self, device, dtype) -> "TokenLinearBlock":
        return TokenLinearBlock(self.src, self.dst, self.weight.to(device=device, dtype=dtype), self.tokens)


class LayerNormBlock(Block):
    """Layer (or RMS) normalization over each token's ``n`` features, ``σ`` constant per sample.

    Parameters
    ----------
    src, dst : int
        Source and destination level indices.
    gamma : Tensor
        ``(n,)`` scale (ones for a normalization without an affine weight); the shift ``β`` is the
        destination level's bias.
    tokens : int
        Number of tokens ``T``.
    eps : float
        Added to the variance (mean square for RMS) before the square root.
    center : bool
        Subtract each token's mean (layer normalization); ``False`` for RMS normalization.
    weight_shape : tuple of int, optional
        The shape of the layer's ``γ`` parameter (its normalized shape), or ``None`` for a layer
        without one (``gamma`` is then ones).

    Notes
    -----
    The state, ``1/σ`` of every token ``(B, T)``, is computed in :meth:`prepare`. The identity
    transform (the ε and LRP-0 rules) reduces without listing the edges (centering is ``x − mean``);
    any other transform works on the ``n × n`` matrix of every token and sample. Summed over
    samples, every edge is a slot of its own (its weight includes the sample's ``1/σ``);
    :meth:`weight_sums` adds the edges into each feature ``j``, which share ``γ_j``.
    """

    kind = "layer_norm"
    linear_forward = False
    #: an edge's weight includes the sample's ``1/σ``: its messages are summed sample by sample
    fixed_slot_weights = False

    def __init__(self, src: int, dst: int, gamma: Tensor, tokens: int, eps: float, center: bool = True,
                 weight_shape: tuple[int, ...] | None = None) -> None:
        n = len(gamma)
        super().__init__(src, dst, tokens * n, tokens * n)
        self.gamma = gamma
        self.tokens = tokens
        self.eps = float(eps)
        self.center = center
        self.weight_shape = None if weight_shape is None else tuple(weight_shape)
        self._edges: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def features(self) -> int:
        return len(self.gamma)

    @functools.cached_property
    def num_edges(self) -> int:
        return self.tokens * int(torch.count_nonzero(self._static_matrix()))

    @property
    def nbytes(self) -> int:
        return self.gamma.numel() * self.gamma.element_size()

    @property
    def device(self) -> torch.device:
        return self.gamma.device

    @property
    def dtype(self) -> torch.dtype:
        return self.gamma.dtype

    def prepare(self, x: Tensor) -> Tensor:
        """``1/σ`` of every token, ``(B, T)``: ``σ = sqrt(var + eps)`` (biased variance), or the
        root mean square for RMS normalization."""
        tokens = _tokens(x, self.features)
        if self.center:
            spread = tokens.var(dim=-1, unbiased=False)
        else:
            spread = tokens.square().mean(dim=-1)
        return spread.add_(self.eps).rsqrt_()

    def select_state(self, state: Tensor, samples: Tensor) -> Tensor:
        return state.index_select(0, samples)

    def forward(self, x: Tensor, state: Tensor = None) -> Tensor:
        return self.matvec(x, Identity(), state)

    def _static_matrix(self) -> Tensor:
        """``(n_dst, n_src)`` static weights of one token: ``(δ_ij − 1/n) γ_j`` (or ``δ_ij γ_j``)."""
        n = self.features
        eye = torch.eye(n, dtype=self.dtype, device=self.device)
        return (eye - 1.0 / n if self.center else eye) * self.gamma[:, None]

    def _matrices(self, transform: Transform, state: Tensor) -> Tensor:
        """``f(w_ij / σ)`` of every sample and token, ``(B, T, n_dst, n_src)``."""
        return transform(self._static_matrix() * state[:, :, None, None])

    def _centered(self, v: Tensor) -> Tensor:
        return v - v.mean(dim=-1, keepdim=True) if self.center else v

    def matvec(self, x: Tensor, transform: Transform = Identity(), state: Tensor = None,
               cache: OperandCache | None = None) -> Tensor:
        tokens = _tokens(x, self.features)
        if isinstance(transform, Identity):
            out = self._centered(tokens) * self.gamma * state[:, :, None]
        else:
            out = torch.einsum("btji,bti->btj", self._matrices(transform, state), tokens)
        return in_layout_of(out.reshape(len(x), self.n_dst), x)

    def rmatvec(self, s: Tensor, transform: Transform = Identity(), state: Tensor = None,
                cache: OperandCache | None = None) -> Tensor:
        tokens = _tokens(s, self.features)
        if isinstance(transform, Identity):
            out = self._centered(tokens * self.gamma) * state[:, :, None]
        else:
            out = torch.einsum("btji,btj->bti", self._matrices(transform, state), tokens)
        return in_layout_of(out.reshape(len(s), self.n_src), s)

    def edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """The static weights ``(δ_ij − 1/n) γ_j`` (without the per-sample ``1/σ``), token by
        token, by destination then source."""
        if self._edges is None:
            n = self.features
            matrix = self._static_matrix()
            j, i = torch.nonzero(matrix, as_tuple=True)
            token = torch.arange(self.tokens, device=self.device)[:, None] * n
            self._edges = ((token + i).reshape(-1), (token + j).reshape(-1), matrix[j, i].repeat(self.tokens))
        return self._edges

    def edge_messages(
        self, x: Tensor, s: Tensor, transform: Transform = Identity(), state: Tensor = None, out: Tensor | None = None
    ) -> Tensor:
        src, dst, weight = self.edges()
        return sample_edge_products(x, src, transform(weight * state[:, dst // self.features]), s, dst, out)

    def run_messages(self, run: EdgeRun, x: Tensor, s: Tensor, transform: Transform = Identity(),
                     state: Tensor = None) -> Tensor:
        """:meth:`edge_messages` of the run's edges, each weight times its token's ``1/σ``."""
        return sample_edge_products(x, run.src, transform(run.weight * state[:, run.dst // self.features]), s, run.dst)

    def weight_sums(self, values: Tensor) -> Tensor:
        """Edge values ``(..., num_edges)`` summed per destination feature, the edges that share
        ``γ_j``: shaped like ``γ`` (:attr:`weight_shape`, else ``(n,)``)."""
        feature = self.edges()[1] % self.features
        sums = values.new_zeros((*values.shape[:-1], self.features)).index_add_(-1, feature, values)
        return sums.reshape(*values.shape[:-1], *(self.weight_shape or (self.features,)))

    def _to(self, device, dtype) -> "LayerNormBlock":
        return LayerNormBlock(self.src, self.dst, self.gamma.to(device=device, dtype=dtype), self.tokens, self.eps,
                              self.center, self.weight_shape)
