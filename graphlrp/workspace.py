"""What explaining a graph keeps between calls: level plans, transformed weights, range checks.

A :class:`Workspace` belongs to one :class:`graphlrp.Explainer`, or to one graph in what
:func:`graphlrp.explain` keeps. Everything in it is derived from the graph and from the rules'
groups, and is rebuilt on demand after :meth:`Workspace.clear`. It holds no reference to the
graph (its methods are given it), so that what is kept for a graph can be freed with the graph;
the graph itself is only read.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from .blocks import Block, OperandCache
from .errors import NumericRangeError
from .graph import Graph, Level
from .plan import LevelPlan, plan_level
from .rules import Rule, RuleGroups

#: plans kept; beyond this many (rules whose groups differ in every call) the plans restart
MAX_CACHED_PLANS = 256
#: (level, rule) pairs remembered as in range; beyond this many the memo restarts
MAX_RANGE_CHECKS = 1024
#: rule settings whose level rules are kept; beyond this many (composites made anew for every
#: call) they restart
MAX_KEPT_SETTINGS = 64


class Workspace:
    """The caches of explaining one graph (which every method is given).

    Parameters
    ----------
    cache_weights : bool
        Whether transformed weights (``W⁺``, ``W + γW⁺``, …) are kept between calls; see
        :attr:`cache_weights`.
    """

    def __init__(self, cache_weights: bool = True) -> None:
        self._cache_weights = bool(cache_weights)
        #: level plans by (level, the rule's groups, which sources are non-negative)
        self._plans: dict[tuple, LevelPlan] = {}
        #: one operand cache per block, by ``id(block)`` (the graph holds its blocks)
        self._operands: dict[int, OperandCache] = {}
        #: the rule of every level, by rule setting (:meth:`level_rules`)
        self._level_rules: dict[tuple, tuple[Rule | None, ...]] = {}
        self._magnitudes: tuple[tuple[float, float], ...] | None = None
        #: rule groups that passed :meth:`check_range`, by (level, id of the groups, epsilon); the
        #: groups are kept so that their id is not reused while the entry exists
        self._in_range: dict[tuple[int, int, float], RuleGroups] = {}

    @property
    def cache_weights(self) -> bool:
        """Whether blocks' transformed weights are kept between calls.

        ``True``: kept where that is faster — CSR and convolution operands always; dense blocks
        compute products with node-major operands of ``PANELS_FROM_BATCH`` (32) samples or more
        panel by panel inside each product (nothing kept, :mod:`graphlrp.blocks.dense`) and keep
        the transformed matrix for smaller or batch-major operands. ``False``: dense blocks always
        use panels; other blocks' transformed weights are built per level and call and dropped
        when the level is done. Setting ``False`` drops what is kept.
        """
        return self._cache_weights

    @cache_weights.setter
    def cache_weights(self, value: bool) -> None:
        self._cache_weights = bool(value)
        for cache in self._operands.values():
            cache.keep = self._cache_weights
            if not self._cache_weights:
                cache.clear()

    def operands(self, block: Block) -> OperandCache:
        """The operand cache of ``block`` (one of the graph's blocks), made on first use."""
        cache = self._operands.get(id(block))
        if cache is None:
            cache = self._operands[id(block)] = OperandCache(self._cache_weights)
        return cache

    def level_rules(self, setting: tuple, resolve: Callable[[], Sequence[Rule | None]]) -> tuple[Rule | None, ...]:
        """The rule of every level for a rule ``setting`` (:meth:`Composite.setting`), from
        ``resolve()`` the first time."""
        chosen = self._level_rules.get(setting)
        if chosen is None:
            if len(self._level_rules) >= MAX_KEPT_SETTINGS:
                self._level_rules.clear()
            chosen = self._level_rules[setting] = tuple(resolve())
        return chosen

    def plan(self, graph: Graph, level: Level, groups: RuleGroups, nonnegative: dict[int, bool]) -> LevelPlan:
        """The plan of ``level`` for a rule's ``groups`` (:func:`graphlrp.plan.plan_level`), made once."""
        key = (level.index, groups, tuple(sorted(nonnegative.items())))
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            plan = self._plans[key] = plan_level(graph, level, groups.groups, nonnegative)
        return plan

    def may_keep_products(self, graph: Graph, level: Level) -> bool:
        """Whether the forward pass may compute ``level`` from its rule's products and keep them
        for the redistribution: always when weights are cached, else only when the level's blocks
        keep nothing of such a product (:attr:`Block.transient_transforms`), as otherwise the
        transformed weights of every level would be alive at once."""
        return self._cache_weights or all(block.transient_transforms for block in graph.incoming[level.index])

    def level_done(self, graph: Graph, level: Level) -> None:
        """Drop the transformed weights of ``level``'s incoming blocks unless weights are cached."""
        if not self._cache_weights:
            for block in graph.incoming[level.index]:
                self.operands(block).clear()

    def clear(self) -> None:
        """Drop every plan, transformed weight, resolved rule, weight magnitude and range check kept."""
        self._plans.clear()
        self._level_rules.clear()
        self._magnitudes = None
        self._in_range.clear()
        for cache in self._operands.values():
            cache.clear()

    # -- numeric range ------------------------------------------------------------------------
    def weight_magnitudes(self, graph: Graph) -> tuple[tuple[float, float], ...]:
        """Per level, the largest ``|w|`` of its incoming edges and the largest ``|b|`` of its biases.

        ``0.0`` where there are none; found once (one pass over the weights). Raises
        :class:`~graphlrp.errors.NumericRangeError` if a weight or bias is NaN or inf.
        """
        if self._magnitudes is None:
            magnitudes = []
            for level in graph.levels:
                found = [block.max_abs_weight() for block in graph.incoming[level.index]]
                bias = 0.0 if level.bias is None or level.bias.numel() == 0 else float(level.bias.abs().max())
                if not all(math.isfinite(value) for value in (*found, bias)):
                    raise NumericRangeError(f"level {level.index} ({level.name!r}) has weights or biases that are "
                                            "NaN or inf; a graph's parameters must be finite")
                magnitudes.append((max(found, default=0.0), bias))
            self._magnitudes = tuple(magnitudes)
        return self._magnitudes

    def check_range(self, graph: Graph, rules: Sequence[Rule | None]) -> None:
        """Raise :class:`~graphlrp.errors.NumericRangeError` if a level's rule would leave the range
        of the graph's dtype on that level's weights and biases (:meth:`Rule.check_range`).

        ``rules`` has one entry per level, as :meth:`Composite.rules` gives them. A level and rule
        that passed are remembered, so a repeated call costs a lookup per level.
        """
        magnitudes = self.weight_magnitudes(graph)
        for index in range(1, len(graph.levels)):
            rule = rules[index]
            groups = rule.cached_groups()
            key = (index, id(groups), rule.epsilon)
            if self._in_range.get(key) is groups:
                continue
            max_weight, max_bias = magnitudes[index]
            rule.check_range(graph.dtype, max_weight, max_bias, f"level {index} ({graph.levels[index].name!r})")
            if len(self._in_range) >= MAX_RANGE_CHECKS:
                self._in_range.clear()
            self._in_range[key] = groups
