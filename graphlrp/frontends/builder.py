"""Building a graph op by op: the shared back end of every torch front-end.

Front-ends (``nn.Sequential`` walking, ``torch.fx`` tracing) call one method per operation with
:class:`Value` s — what a torch tensor of the network is on the graph: a level's nodes in their
natural order (``index is None``) or a selection of nodes (after a permutation or a
concatenation). Blocks are built at the end, so that a batch norm can still be folded into the
layer before it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from ..activations import IDENTITY, Activation, compose
from ..blocks import (KINDS, AttentionBlock, Block, ConvBlock, ElementwiseBlock, GateBlock, HeadMatrices,
                      HeadProductBlock, LayerNormBlock, MaxPoolBlock, SoftmaxBlock, SoftmaxRemainderBlock,
                      SparseBlock, TokenLinearBlock, UnrolledConvBlock, block_from_matrix)
from ..blocks.conv import count_conv_edges
from ..errors import InputError, UnsupportedModuleError
from ..graph import Graph, LayerType, Level
from ..rules import Epsilon, Norm, Pass
from ..thresholds import choose_kind, unrolls_convolution


@dataclass(frozen=True)
class Value:
    """A tensor of the network on the graph (one sample's ``shape``).

    ``index is None``: the nodes of ``level`` in order. Otherwise ``index`` holds the global node id
    of every element, row-major.
    """

    shape: tuple[int, ...]
    level: int | None = None
    index: Tensor | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class _BlockSpec:
    """A block to build at the end: its levels, weights, how to build it and what it will cost."""

    src: int
    dst: int
    weight: Tensor
    build: Callable[[int, int, Tensor], Block]
    cost: Callable[[Tensor], tuple[int, int]]  # weights -> (edges, bytes the block will hold)
    channel_axis_size: int | None = None  # output channels, for folding a batch norm


def _matrix_cost(kind: str) -> Callable[[Tensor], tuple[int, int]]:
    """The cost of a block of ``kind`` (or the one ``'auto'`` picks) built from a weight matrix."""
    def cost(weight: Tensor) -> tuple[int, int]:
        edges = int(torch.count_nonzero(weight))
        n_dst, n_src = weight.shape
        return edges, KINDS[_choose_kind(kind, weight)].held_bytes(n_src, n_dst, edges, weight.element_size())

    return cost


def _edge_list_cost(kind: str, n_src: int, n_dst: int) -> Callable[[Tensor], tuple[int, int]]:
    """The cost of a block of ``kind`` built from an edge list whose weights are given."""
    def cost(weight: Tensor) -> tuple[int, int]:
        return len(weight), KINDS[kind].held_bytes(n_src, n_dst, len(weight), weight.element_size())

    return cost


def _elementwise_cost(weight: Tensor) -> tuple[int, int]:
    return int(torch.count_nonzero(weight)), weight.numel() * (8 + weight.element_size())


def _kernel_cost(count: Callable[[Tensor], int]) -> Callable[[Tensor], tuple[int, int]]:
    def cost(weight: Tensor) -> tuple[int, int]:
        return count(weight), weight.numel() * weight.element_size()

    return cost


def _choose_kind(block_kind: str, weight: Tensor) -> str:
    """``block_kind``, or for ``'auto'`` the kind the threshold of ``weight``'s device gives
    (:mod:`graphlrp.thresholds`)."""
    if block_kind != "auto":
        return block_kind
    return choose_kind(int(torch.count_nonzero(weight)), weight.shape[1], weight.shape[0], weight.device)


#: how attention is lowered (:meth:`GraphBuilder.attention`)
ATTENTION_RULES = ("cp-lrp", "attnlrp")


@dataclass
class GraphBuilder:
    """Levels and block specifications under construction."""

    block_kind: str = "auto"
    max_pool_mode: str = "winner"
    dtype: torch.dtype = torch.float32
    attention_rule: str = "cp-lrp"
    levels: list[Level] = field(default_factory=list)
    specs: list[_BlockSpec] = field(default_factory=list)

    # -- levels -------------------------------------------------------------------------------
    def _next_offset(self) -> int:
        last = self.levels[-1]
        return last.offset + last.size

    def _add_level(self, name: str, layer_type: LayerType, shape: tuple[int, ...], bias: Tensor | None = None,
                   default_rule=None) -> int:
        index = len(self.levels)
        offset = self._next_offset() if self.levels else 0
        self.levels.append(Level(index, name, layer_type, tuple(shape), offset, bias, IDENTITY, default_rule))
        return index

    def input(self, shape: tuple[int, ...]) -> Value:
        """The network's input."""
        return Value(tuple(shape), self._add_level("input", "input", shape))

    def source(self, value: Value, name: str) -> int:
        """A level holding ``value``'s nodes in order: its own, or a new copy level for a selection."""
        if value.index is None:
            return value.level
        level = self._add_level(name, "copy", value.shape, default_rule=Pass())
        self._gather(level, value.index)
        return level

    def _gather(self, level: int, ids: Tensor) -> None:
        """Weight-1 edges into ``level``: node ``i`` from global node ``ids[i]`` (none where ``ids[i] < 0``)."""
        offsets = [l.offset for l in self.levels]
        owner = torch.bucketize(ids, torch.tensor(offsets[1:], device=ids.device), right=True)
        for src in torch.unique(owner[ids >= 0]).tolist():
            chosen = (owner == src) & (ids >= 0)
            local = torch.where(chosen, ids - offsets[src], torch.zeros_like(ids))
            weight = chosen.to(self.dtype)
            self.specs.append(_BlockSpec(src, level, weight, self._elementwise_builder(local), _elementwise_cost))

    def _elementwise_builder(self, local: Tensor) -> Callable[[int, int, Tensor], Block]:
        def build(src: int, dst: int, weight: Tensor) -> Block:
            return ElementwiseBlock(src, dst, self.levels[src].size, local, weight)

        return build

    # -- operations ---------------------------------------------------------------------------
    def linear(self, name: str, layer_type: LayerType, value: Value, weight: Tensor, bias: Tensor | None) -> Value:
        """``y = W x + b`` over the last dimension of one sample (every leading one a token's index)."""
        if not value.shape or value.shape[-1] != weight.shape[1]:
            raise InputError(f"{name} ({_type_name(layer_type)}) expects {weight.shape[1]} features in the last "
                             f"dimension, receives shape {value.shape}")
        if len(value.shape) > 1:
            return self.token_linear(name, layer_type, value, weight, bias)
        src = self.source(value, f"{name}:input")
        dst = self._add_level(name, layer_type, (weight.shape[0],), bias)
        kind = self.block_kind

        def build(s: int, d: int, w: Tensor) -> Block:
            block = block_from_matrix(_choose_kind(kind, w), s, d, w)
            block.automatic_kind = kind == "auto"
            return block

        self.specs.append(_BlockSpec(src, dst, weight, build, _matrix_cost(kind), weight.shape[0]))
        return Value((weight.shape[0],), dst)

    def token_linear(self, name: str, layer_type: LayerType, value: Value, weight: Tensor,
                     bias: Tensor | None) -> Value:
        """``y_t = W x_t + b`` for every token ``t`` of ``value (..., F)``: a weight shared by the tokens."""
        tokens = value.size // value.shape[-1]
        src = self.source(value, f"{name}:input")
        shape = (*value.shape[:-1], weight.shape[0])
        dst = self._add_level(name, layer_type, shape, None if bias is None else bias.repeat(tokens))

        def build(s: int, d: int, w: Tensor) -> Block:
            return TokenLinearBlock(s, d, w, tokens)

        def count(w: Tensor) -> int:
            return tokens * int(torch.count_nonzero(w))

        self.specs.append(_BlockSpec(src, dst, weight, build, _kernel_cost(count)))
        return Value(shape, dst)

    def layer_norm(self, name: str, layer_type: LayerType, value: Value, features: int, gamma: Tensor | None,
                   beta: Tensor | None, eps: float, center: bool = True) -> Value:
        """Layer (``center``) or RMS normalization over the last ``features`` elements of every
        token, ``σ`` held constant per sample (see :class:`~graphlrp.blocks.LayerNormBlock`)."""
        tokens = value.size // features
        src = self.source(value, f"{name}:input")
        bias = None if beta is None else beta.reshape(-1).to(self.dtype).repeat(tokens)
        dst = self._add_level(name, layer_type, value.shape, bias)
        scale = torch.ones(features, dtype=self.dtype) if gamma is None else gamma.reshape(-1).to(self.dtype)
        weight_shape = None if gamma is None else tuple(gamma.shape)

        def build(s: int, d: int, w: Tensor) -> Block:
            return LayerNormBlock(s, d, w, tokens, eps, center, weight_shape)

        def count(w: Tensor) -> int:
            per_token = int(torch.count_nonzero(w)) * ((features if features > 1 else 0) if center else 1)
            return tokens * per_token

        self.specs.append(_BlockSpec(src, dst, scale, build, _kernel_cost(count)))
        return Value(value.shape, dst)

    def conv(self, name: str, layer_type: LayerType, value: Value, weight: Tensor, bias: Tensor | None,
             out_shape: tuple[int, ...], stride, padding, dilation, groups: int) -> Value:
        """An N-d convolution; ``out_shape`` is one sample's output shape."""
        src = self.source(value, f"{name}:input")
        channels, spatial = out_shape[0], math.prod(out_shape[1:])
        node_bias = None if bias is None else bias.repeat_interleave(spatial)
        dst = self._add_level(name, layer_type, out_shape, node_bias)
        in_shape = value.shape
        automatic = self.block_kind == "auto"

        def count(w: Tensor) -> int:
            return count_conv_edges(w, in_shape, out_shape, stride, padding, dilation)

        def unrolls(w: Tensor, edges: int) -> bool:
            held = UnrolledConvBlock.held_bytes(value.size, math.prod(out_shape), edges, w.element_size())
            return automatic and unrolls_convolution(int(torch.count_nonzero(w)) / w.numel(), held, w.device)

        def build(s: int, d: int, w: Tensor) -> Block:
            block = ConvBlock(s, d, w, in_shape, out_shape, stride, padding, dilation, groups)
            return block.unrolled() if unrolls(w, block.num_edges) else block

        def cost(w: Tensor) -> tuple[int, int]:
            edges = count(w)
            if unrolls(w, edges):
                return edges, UnrolledConvBlock.held_bytes(value.size, math.prod(out_shape), edges, w.element_size())
            return edges, w.numel() * w.element_size()

        self.specs.append(_BlockSpec(src, dst, weight, build, cost, channels))
        return Value(tuple(out_shape), dst)

    def avg_pool(self, name: str, layer_type: LayerType, value: Value, out_shape: tuple[int, ...], kernel,
                 stride, padding, divisor: int | None = None) -> Value:
        """Average pooling as a depthwise convolution with weights ``1 / k`` (Zennit's ``Norm`` rule)."""
        channels = value.shape[0]
        weight = torch.full((channels, 1, *kernel), 1.0 / (divisor or math.prod(kernel)), dtype=self.dtype)
        result = self.conv(name, layer_type, value, weight, None, out_shape, stride, padding,
                           (1,) * len(kernel), channels)
        self.levels[result.level] = replace(self.levels[result.level], default_rule=Norm())
        self.specs[-1].channel_axis_size = None  # never fold a batch norm into a pooling
        return result

    def adaptive_avg_pool(self, name: str, layer_type: LayerType, value: Value, out_shape: tuple[int, ...]) -> Value:
        """Adaptive average pooling: output ``i`` averages inputs ``⌊i·n/m⌋ .. ⌈(i+1)·n/m⌉ − 1`` per axis."""
        in_spatial, out_spatial = value.shape[1:], out_shape[1:]
        if all(n % m == 0 for n, m in zip(in_spatial, out_spatial)):
            kernel = tuple(n // m for n, m in zip(in_spatial, out_spatial))
            return self.avg_pool(name, layer_type, value, out_shape, kernel, kernel, (0,) * len(kernel))
        src = self.source(value, f"{name}:input")
        dst = self._add_level(name, layer_type, out_shape, default_rule=Norm())
        channels = value.shape[0]
        in_grid = torch.arange(math.prod(in_spatial)).reshape(in_spatial)
        rows, cols, weights = [], [], []
        for out_position, window in enumerate(_adaptive_windows(in_spatial, out_spatial)):
            members = in_grid[window].reshape(-1)
            channel = torch.arange(channels)[:, None]
            cols.append((channel * in_grid.numel() + members[None, :]).reshape(-1))
            rows.append((channel * math.prod(out_spatial) + out_position).expand(-1, len(members)).reshape(-1))
            weights.append(torch.full((channels * len(members),), 1.0 / len(members), dtype=self.dtype))
        src_idx, dst_idx, weight = torch.cat(cols), torch.cat(rows), torch.cat(weights)
        n_src, n_dst = value.size, math.prod(out_shape)

        def build(s: int, d: int, w: Tensor) -> Block:
            return SparseBlock.from_edge_list(s, d, n_src, n_dst, src_idx.to(w.device), dst_idx.to(w.device), w)

        self.specs.append(_BlockSpec(src, dst, weight, build, _edge_list_cost("sparse", n_src, n_dst)))
        return Value(tuple(out_shape), dst)

    def max_pool(self, name: str, layer_type: LayerType, value: Value, out_shape: tuple[int, ...], kernel, stride,
                 padding, dilation, ceil_mode: bool) -> Value:
        """Max pooling: sample-dependent edges (see :class:`~graphlrp.blocks.MaxPoolBlock`)."""
        src = self.source(value, f"{name}:input")
        rule = Pass() if self.max_pool_mode == "winner" else Norm()
        dst = self._add_level(name, layer_type, out_shape, default_rule=rule)
        in_shape, mode = value.shape, self.max_pool_mode

        def build(s: int, d: int, w: Tensor) -> Block:
            return MaxPoolBlock(s, d, in_shape, out_shape, kernel, stride, padding, dilation, ceil_mode, mode,
                                w.dtype, w.device)

        def cost(w: Tensor) -> tuple[int, int]:
            ones = torch.ones((in_shape[0], 1, *kernel))
            return count_conv_edges(ones, in_shape, out_shape, stride, padding, dilation), 0

        self.specs.append(_BlockSpec(src, dst, torch.ones(1, dtype=self.dtype), build, cost))
        return Value(tuple(out_shape), dst)

    def batch_norm(self, name: str, layer_type: LayerType, value: Value, scale: Tensor, shift: Tensor,
                   fold: bool) -> Value:
        """``y = scale · x + shift`` per channel; folded into the layer before it when ``fold`` allows.

        Folding (canonization) rewrites the preceding dense or convolution layer's weights and
        biases, ``W' = W·scale``, ``b' = b·scale + shift``, exactly as Zennit's canonizer does.
        Otherwise the batch norm becomes an element-wise level with Zennit's ``Pass`` rule.
        """
        spatial = value.size // value.shape[0]
        node_scale, node_shift = scale.repeat_interleave(spatial), shift.repeat_interleave(spatial)
        spec = self._foldable_spec(value) if fold else None
        if spec is not None:
            level = self.levels[value.level]
            spec.weight = spec.weight * scale.reshape(-1, *([1] * (spec.weight.dim() - 1)))
            bias = node_shift if level.bias is None else level.bias * node_scale + node_shift
            self.levels[value.level] = replace(level, bias=bias)
            return value
        src = self.source(value, f"{name}:input")
        dst = self._add_level(name, layer_type, value.shape, node_shift, default_rule=Pass())
        self.specs.append(_BlockSpec(src, dst, node_scale, self._elementwise_builder(torch.arange(value.size)),
                                     _elementwise_cost))
        return Value(value.shape, dst)

    def _foldable_spec(self, value: Value) -> _BlockSpec | None:
        if value.index is not None:
            return None
        level = self.levels[value.level]
        incoming = [s for s in self.specs if s.dst == value.level]
        if len(incoming) != 1 or incoming[0].channel_axis_size != value.shape[0] or level.activation is not IDENTITY:
            return None
        return incoming[0]

    def activation(self, name: str, value: Value, activation: Activation, exclusive: bool) -> Value:
        """An element-wise function; merged into the level that computes ``value`` when nothing else
        uses that level's output (``exclusive``), else applied on a copy level."""
        if exclusive and value.index is None and value.level != 0:
            level = self.levels[value.level]
            self.levels[value.level] = replace(level, activation=compose(level.activation, activation))
            return value
        src = value.level if value.index is None else None
        if src is None:
            src = self.source(value, f"{name}:input")
        dst = self._add_level(name, "copy", value.shape, default_rule=Pass())
        self.specs.append(_BlockSpec(src, dst, torch.ones(value.size, dtype=self.dtype),
                                     self._elementwise_builder(torch.arange(value.size)), _elementwise_cost))
        self.levels[dst] = replace(self.levels[dst], activation=activation)
        return Value(value.shape, dst)

    def add(self, name: str, values: list[Value], constant: Tensor | None = None) -> Value:
        """A sum node per element: weight-1 edges from each operand (Zennit's ``Norm`` rule)."""
        shape = values[0].shape
        if any(v.shape != shape for v in values):
            raise UnsupportedModuleError(f"{name}: cannot add tensors of shapes {[v.shape for v in values]} "
                                         "(broadcasting between computed tensors is not supported)")
        bias = None if constant is None else constant.to(self.dtype).expand(shape).reshape(-1).clone()
        sources = [self.source(value, f"{name}:operand") for value in values]  # copy levels come first
        dst = self._add_level(name, "sum", shape, bias, default_rule=Norm())
        for value, src in zip(values, sources):
            self.specs.append(_BlockSpec(src, dst, torch.ones(value.size, dtype=self.dtype),
                                         self._elementwise_builder(torch.arange(value.size)), _elementwise_cost))
        return Value(shape, dst)

    def scale(self, name: str, value: Value, factor: Tensor) -> Value:
        """``y = factor · x`` element-wise, ``factor`` a constant broadcast to ``value``'s shape: one
        edge per element weighing its factor (Zennit's ``Pass`` rule, like an unfolded batch norm)."""
        weight = _broadcast(name, factor.to(self.dtype), value.shape).reshape(-1).clone()
        src = self.source(value, f"{name}:input")
        dst = self._add_level(name, "scale", value.shape, default_rule=Pass())
        self.specs.append(_BlockSpec(src, dst, weight, self._elementwise_builder(torch.arange(value.size)),
                                     _elementwise_cost))
        return Value(value.shape, dst)

    def gate(self, name: str, signal: Value, gate: Value) -> Value:
        """``y = signal · gate`` element-wise for two computed tensors, broadcast to a common shape.

        A :class:`~graphlrp.blocks.GateBlock` from the signal, whose edge weights in a sample are the
        gate's values; relevance passes to the signal unchanged (``Pass``), the gate receives none.
        """
        try:
            shape = tuple(torch.broadcast_shapes(signal.shape, gate.shape))
        except RuntimeError:
            raise UnsupportedModuleError(f"{name}: cannot multiply tensors of shapes {signal.shape} and "
                                         f"{gate.shape}") from None
        index = _broadcast(name, torch.arange(signal.size).reshape(signal.shape), shape).reshape(-1).clone()
        gate_index = _broadcast(name, torch.arange(gate.size).reshape(gate.shape), shape).reshape(-1).clone()
        src = self.source(signal, f"{name}:signal")
        context = self.source(gate, f"{name}:gate")
        dst = self._add_level(name, "gate", shape, default_rule=Pass())
        n_src, dtype = signal.size, self.dtype

        def build(s: int, d: int, w: Tensor) -> Block:
            return GateBlock(s, d, n_src, index.to(w.device), context, gate_index.to(w.device), dtype)

        def cost(w: Tensor) -> tuple[int, int]:
            return len(index), 2 * len(index) * index.element_size()

        self.specs.append(_BlockSpec(src, dst, torch.ones(1, dtype=self.dtype), build, cost))
        return Value(shape, dst)

    def through_sigmoid(self, value: Value) -> bool:
        """Whether ``value``'s nodes all apply a sigmoid or hard sigmoid last (a gate's values in ``[0, 1]``)."""
        ids = self.node_ids(value)
        offsets = torch.tensor([level.offset for level in self.levels[1:]], dtype=ids.dtype)
        owners = torch.unique(torch.bucketize(ids, offsets, right=True)).tolist()
        last = {self.levels[i].activation.name.rsplit(">", 1)[-1].lower() for i in owners}
        return bool(last) and last <= {"sigmoid", "hardsigmoid"}

    def attention(self, name: str, query: Value, key: Value, value: Value, heads: int, scale: float | None = None,
                  causal: bool = False) -> Value:
        """``softmax(Q Kᵀ · scale) V`` per head, lowered for :attr:`attention_rule`.

        ``query``, ``key`` and ``value`` are ``(T, H · d)`` token-major (head ``h`` the features
        ``h·d .. h·d + d − 1``); the result is too. ``'cp-lrp'``: one attention block, the
        probabilities held constant, ``Q`` and ``K`` its context levels (see
        :class:`~graphlrp.blocks.AttentionBlock`). ``'attnlrp'``: the scores, the probabilities and
        the output as levels of their own, the products split by the uniform rule and the softmax
        by its Jacobian (see :mod:`graphlrp.blocks.attnlrp`).
        """
        if not (len(value.shape) == 2 and query.shape == key.shape == value.shape):
            raise UnsupportedModuleError(f"{name}: attention needs query, key and value of one shape (tokens, "
                                         f"features); they have shapes {query.shape}, {key.shape}, {value.shape}")
        tokens, width = value.shape
        if width % heads:
            raise UnsupportedModuleError(f"{name}: {width} features do not split into {heads} heads")
        head_dim = width // heads
        levels = tuple(self.source(v, f"{name}:{role}") for v, role in zip((query, key, value),
                                                                              ("query", "key", "value")))
        if self.attention_rule == "attnlrp":
            return self._attnlrp(name, levels, value.shape, heads, scale, causal)
        q, k, v = levels
        dst = self._add_level(name, "attention", value.shape)

        def build(s: int, d: int, w: Tensor) -> Block:
            return AttentionBlock(s, d, q, k, tokens, heads, head_dim, scale, causal, w.dtype, w.device)

        def cost(w: Tensor) -> tuple[int, int]:
            return heads * head_dim * tokens * tokens, 0

        self.specs.append(_BlockSpec(v, dst, torch.ones(1, dtype=self.dtype), build, cost))
        return Value(value.shape, dst)

    def _attnlrp(self, name: str, levels: tuple[int, int, int], shape: tuple[int, int], heads: int,
                 scale: float | None, causal: bool) -> Value:
        """AttnLRP's attention on the levels ``(Q, K, V)``: levels ``name:scores``, ``name:constant``
        (one node of value 1, where the softmax's Taylor remainder goes), ``name:probabilities``
        and ``name`` (the output)."""
        q, k, v = levels
        tokens, width = shape
        head_dim = width // heads
        factor = (1.0 / math.sqrt(head_dim) if scale is None else float(scale)) / 2
        per_token = HeadMatrices(heads, tokens, head_dim, token_major=True)
        keys = HeadMatrices(heads, head_dim, tokens, token_major=True, transposed=True)
        square = HeadMatrices(heads, tokens, tokens, token_major=False)
        scores = self._add_level(f"{name}:scores", "attention_scores", (heads, tokens, tokens))
        constant = self._add_level(f"{name}:constant", "constant", (1,), torch.ones(1, dtype=self.dtype),
                                   default_rule=Epsilon(0.0))
        # Proposition 3.1 as LXT applies it: no stabilizer (the probabilities are positive)
        probabilities = self._add_level(f"{name}:probabilities", "softmax", (heads, tokens, tokens),
                                        default_rule=Epsilon(0.0))
        out = self._add_level(name, "attention", shape)

        def product(src: int, dst: int, other: int, left: HeadMatrices, right: HeadMatrices, result: HeadMatrices,
                    side: str, weight: float) -> None:
            def build(s: int, d: int, w: Tensor) -> Block:
                return HeadProductBlock(s, d, other, left, right, result, side, weight, w.dtype, w.device)

            terms = left.size * right.cols
            self.specs.append(_BlockSpec(src, dst, torch.ones(1, dtype=self.dtype), build, lambda w: (terms, 0)))

        product(q, scores, k, per_token, keys, square, "left", factor)
        product(k, scores, q, per_token, keys, square, "right", factor)

        def softmax(s: int, d: int, w: Tensor) -> Block:
            return SoftmaxBlock(s, d, heads, tokens, causal, w.dtype, w.device)

        def remainder(s: int, d: int, w: Tensor) -> Block:
            return SoftmaxRemainderBlock(s, d, scores, heads, tokens, causal, w.dtype, w.device)

        size = heads * tokens * tokens
        self.specs.append(_BlockSpec(scores, probabilities, torch.ones(1, dtype=self.dtype), softmax,
                                     lambda w: (size * tokens, 0)))
        self.specs.append(_BlockSpec(constant, probabilities, torch.ones(1, dtype=self.dtype), remainder,
                                     lambda w: (size, 0)))
        product(probabilities, out, v, square, per_token, per_token, "left", 0.5)
        product(v, out, probabilities, square, per_token, per_token, "right", 0.5)
        return Value(shape, out)

    def cat_constant(self, name: str, parts: list[Value | Tensor], dim: int) -> Value:
        """Concatenation along per-sample dimension ``dim`` of computed values and constants (a
        class token): a ``sum`` level whose constant nodes are biases, the others weight-1 copies."""
        ids = [self.node_ids(p).reshape(p.shape) if isinstance(p, Value) else
               torch.full(p.shape, -1, dtype=torch.long) for p in parts]
        constants = [torch.zeros(p.shape, dtype=self.dtype) if isinstance(p, Value) else p.to(self.dtype)
                     for p in parts]
        try:
            index, bias = torch.cat(ids, dim=dim), torch.cat(constants, dim=dim)
        except RuntimeError as error:
            raise UnsupportedModuleError(f"{name}: cannot concatenate shapes {[tuple(p.shape) for p in parts]} "
                                         f"along dimension {dim}: {error}") from None
        level = self._add_level(name, "sum", tuple(index.shape), bias.reshape(-1), default_rule=Norm())
        self._gather(level, index.reshape(-1))
        return Value(tuple(index.shape), level)

    def reduce(self, name: str, value: Value, dims: tuple[int, ...], keepdim: bool, mean: bool) -> Value:
        """The sum (``mean``: the average) over per-sample dimensions ``dims``: an edge of weight 1
        (``1 / n``) from every element to its output, with Zennit's ``Norm`` rule like average pooling."""
        kept = [1 if d in dims else n for d, n in enumerate(value.shape)]
        out_index = torch.arange(math.prod(kept)).reshape(kept).expand(value.shape).reshape(-1)
        count = math.prod(value.shape[d] for d in dims)
        shape = tuple(kept) if keepdim else tuple(n for d, n in enumerate(value.shape) if d not in dims)
        src = self.source(value, f"{name}:input")
        dst = self._add_level(name, layer_type="mean" if mean else "sum", shape=shape, default_rule=Norm())
        weight = torch.full((value.size,), 1.0 / count if mean else 1.0, dtype=self.dtype)
        n_src, n_dst, src_idx = value.size, math.prod(shape), torch.arange(value.size)

        def build(s: int, d: int, w: Tensor) -> Block:
            return SparseBlock.from_edge_list(s, d, n_src, n_dst, src_idx.to(w.device), out_index.to(w.device), w)

        self.specs.append(_BlockSpec(src, dst, weight, build, _edge_list_cost("sparse", n_src, n_dst)))
        return Value(shape, dst)

    # -- renumberings (no nodes, no edges) ------------------------------------------------------
    def node_ids(self, value: Value) -> Tensor:
        """Global node id of every element of ``value``, row-major."""
        if value.index is not None:
            return value.index
        return torch.arange(value.size) + self.levels[value.level].offset

    def reshape(self, value: Value, shape: tuple[int, ...]) -> Value:
        """Same nodes in the same order, another shape."""
        if math.prod(shape) != value.size:
            raise UnsupportedModuleError(f"cannot reshape {value.shape} to {shape}: the number of elements differs")
        return replace(value, shape=tuple(shape))

    def permute(self, value: Value, dims: tuple[int, ...]) -> Value:
        """Per-sample dimensions reordered (``dims`` excludes the batch dimension)."""
        ids = self.node_ids(value).reshape(value.shape).permute(*dims)
        return Value(tuple(ids.shape), None, ids.reshape(-1))

    def cat(self, values: list[Value], dim: int) -> Value:
        """Concatenation along per-sample dimension ``dim``."""
        ids = torch.cat([self.node_ids(v).reshape(v.shape) for v in values], dim=dim)
        return Value(tuple(ids.shape), None, ids.reshape(-1))

    def renumber(self, value: Value, view: Callable[[Tensor], object], where: str) -> object:
        """The result of a view or indexing ``view`` (chunk, split, narrow, select, indexing ...)
        applied to ``value``: its nodes picked and arranged, as a :class:`Value` or a tuple of them.

        ``view`` takes a batch ``(2, *shape)`` of node ids; it must keep the batch dimension as it is.
        """
        ids = self.node_ids(value).reshape(value.shape)
        step = self._next_offset()
        batch = torch.stack([ids, ids + step])
        return _picked(view(batch), step, where)

    # -- result -------------------------------------------------------------------------------
    def estimate(self) -> tuple[int, int, int]:
        """Nodes, edges and bytes of the graph being built, before any block is allocated."""
        nodes = sum(level.size for level in self.levels)
        costs = [spec.cost(spec.weight) for spec in self.specs]
        biases = sum(l.bias.numel() * l.bias.element_size() for l in self.levels if l.bias is not None)
        return nodes, sum(c[0] for c in costs), sum(c[1] for c in costs) + biases

    def finish(self, output: Value) -> Graph:
        """The graph, its output ``output``."""
        blocks = [spec.build(spec.src, spec.dst, spec.weight) for spec in self.specs]
        if output.index is None and output.level == len(self.levels) - 1:
            return Graph(self.levels, blocks, output_shape=output.shape)
        return Graph(self.levels, blocks, outputs=self.node_ids(output), output_shape=output.shape)


def _adaptive_windows(in_spatial: tuple[int, ...], out_spatial: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Input window of every output position of an adaptive pooling, row-major."""
    per_axis = [[slice(i * n // m, -(-(i + 1) * n // m)) for i in range(m)] for n, m in zip(in_spatial, out_spatial)]
    windows: list[tuple[slice, ...]] = [()]
    for axis in per_axis:
        windows = [w + (s,) for w in windows for s in axis]
    return windows


def _broadcast(name: str, values: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``values`` broadcast to one sample's ``shape`` (a leading batch dimension of 1 dropped)."""
    if values.dim() == len(shape) + 1 and values.shape[0] == 1:
        values = values[0]
    try:
        return values.expand(shape)
    except RuntimeError:
        raise UnsupportedModuleError(f"{name}: a tensor of shape {tuple(values.shape)} does not broadcast to one "
                                     f"sample's shape {shape}") from None


def _picked(result: object, step: int, where: str) -> object:
    """:meth:`GraphBuilder.renumber`'s values from a view of a batch of two node-id tensors."""
    if isinstance(result, (tuple, list)):
        return tuple(_picked(part, step, where) for part in result)
    if not isinstance(result, Tensor) or result.dim() == 0 or len(result) != 2 or not bool(
            (result[1] - result[0] == step).all()):
        raise UnsupportedModuleError(f"{where} mixes or selects samples of the batch; only per-sample dimensions "
                                     "may be indexed")
    return Value(tuple(result.shape[1:]), None, result[0].reshape(-1).clone())


def _type_name(layer_type: LayerType) -> str:
    return layer_type if isinstance(layer_type, str) else layer_type.__name__
