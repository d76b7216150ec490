"""What a rule needs at one level: which products, combined how — worked out once, then cached.

A rule's groups of terms are rewritten, per incoming block, into products ``f_in(a) · f_w(W)``
of a source level's (transformed) activations with a block's (transformed) weights, each with a
coefficient. Terms whose input is the activation itself have their weights expanded into a basis
(``W⁻ = W − W⁺``, ``W + γW⁺``), so that the ``W`` part is the forward pass's pre-activation and
the other products are shared between terms and groups; expanding the weights of every input is
tried too, and the plan with fewer large products kept. Groups whose contributions all have one
sign are never expanded (their denominators would become differences). Redistributions through
the same weights with proportional quotients share one product. When a level's products add up
to ``W a``, the forward pass computes the level from them. Inputs that are identically zero are
dropped, and ``a⁺`` of a non-negative level is ``a`` itself.

The plan depends only on the rule's groups, the level's blocks and bias, and which source levels
are non-negative in this batch; it holds no sample data. :class:`graphlrp.workspace.Workspace`
keeps the plans of one way of explaining.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from torch import Tensor

from .graph import Graph, Level
from .rules import Group, Term
from .transforms import Identity, InputCombination, Negative, Positive, Transform, Zero

#: a rule's terms rewritten for one block: (effective input transform, weight basis) -> coefficient
Combination = dict[tuple[Transform, Transform], float]
LINEAR = (Identity(), Identity())


@dataclass(frozen=True)
class Product:
    """``f_in(a_src) · f_w(W)`` of the level's ``block``-th incoming block."""

    block: int
    inputs: Transform
    weights: Transform


@dataclass(frozen=True)
class GroupPlan:
    """One group's denominator: ``linear · z + Σ coefficient · product + per_node``.

    ``forward`` says the denominator is the forward pre-activation ``z`` itself. ``z`` includes
    the level's bias; ``per_node`` is the group's bias term minus ``linear`` times that bias.
    """

    group: Group
    forward: bool
    linear: float
    parts: tuple[tuple[float, int], ...]  # (coefficient, index into LevelPlan.products)
    per_node: Tensor | None


@dataclass(frozen=True)
class Redistribution:
    """Relevance into the sources of one block through one (input, weight basis) pair:
    ``R_src += f_in(a) ⊙ f_w(W)ᵀ (Σ_g coefficient_g · s_g)``."""

    block: int
    inputs: Transform
    weights: Transform
    terms: tuple[tuple[int, float], ...]  # (group index, coefficient including the group's scale)


@dataclass(frozen=True)
class LevelPlan:
    """The products a level needs, its groups' denominators, and its redistributions.

    ``forward`` lists the products whose sum is the level's forward product ``Σ_blocks W a``
    (e.g. ``W⁺a⁺ + W⁻a⁻ + W⁻a⁺ + W⁺a⁻`` for αβ): the forward pass then computes those products
    instead of its own. ``None`` when the products do not add up to it.
    """

    products: tuple[Product, ...]
    groups: tuple[GroupPlan, ...]
    redistributions: tuple[Redistribution, ...]
    forward: tuple[int, ...] | None = None


def uses_input_sign(transform: Transform) -> bool:
    """Whether an input transform's values depend on the sign of the inputs (``a⁺``, ``a⁻``)."""
    return isinstance(transform, (Positive, Negative))


def splits_inputs_by_sign(groups: tuple[Group, ...]) -> bool:
    """Whether any term's input transform depends on the sign of the inputs: only then does the
    plan depend on whether a source level is non-negative."""
    return any(uses_input_sign(term.inputs) for group in groups for term in group.terms)


def effective_input(transform: Transform, nonnegative: bool) -> Transform | None:
    """The input transform that gives the same values: ``None`` if they are all zero."""
    if isinstance(transform, Identity) or (nonnegative and isinstance(transform, Positive)):
        return Identity()
    if nonnegative and isinstance(transform, Negative):
        return None
    return transform


def is_sign_definite(terms: tuple[Term, ...], nonnegative: bool) -> bool:
    """Whether every contribution ``sign · f_in(a) · f_w(w)`` of the terms has one and the same sign.

    Such a group's denominator is a sum of terms of one sign (z⁺, the α and β parts of αβ): it is
    computed from its own products, never as a difference (``W⁻a = Wa − W⁺a``), which rounding could
    leave of the wrong sign where the true sum is 0 and then amplify by ``1/ε`` in the redistribution.
    """
    signs = set()
    for term in terms:
        effective = effective_input(term.inputs, nonnegative)
        if effective is None:
            continue
        input_sign = int(nonnegative) if isinstance(effective, Identity) else effective.sign
        term_sign = (term.sign > 0) - (term.sign < 0)
        signs.add(term_sign * input_sign * term.weights.sign)
    return len(signs) == 1 and 0 not in signs


def combine(terms: tuple[Term, ...], scale: float, nonnegative: bool, expand_all: bool = False) -> Combination:
    """Merge terms that share input and weight transform, expanding the weights of linear inputs
    (of every input with ``expand_all``) unless the terms are sign-definite (:func:`is_sign_definite`)."""
    combination: Combination = {}
    expand = not is_sign_definite(terms, nonnegative)
    for term in terms:
        effective = effective_input(term.inputs, nonnegative)
        if effective is None:
            continue
        expanded = expand and (expand_all or isinstance(effective, Identity))
        expansion = term.weights.expansion() if expanded else ((term.weights, 1.0),)
        for basis, coefficient in expansion:
            key = (effective, basis)
            combination[key] = combination.get(key, 0.0) + scale * term.sign * coefficient
    return {key: c for key, c in combination.items() if c != 0.0}


def _sign_parts(transform: Transform, nonnegative: bool = False) -> frozenset[int] | None:
    """The sign parts ``x⁺`` (``1``) and ``x⁻`` (``-1``) a transform keeps: ``x = x⁺ + x⁻``
    (``None`` for a transform that is not such a part)."""
    if isinstance(transform, Identity):
        return frozenset({1}) if nonnegative else frozenset({1, -1})
    if isinstance(transform, (Positive, Negative)):
        return frozenset({transform.sign})
    return None


def forward_products(products: dict[Product, int], blocks, nonnegative: dict[int, bool]) -> tuple[int, ...] | None:
    """The product slots that sum to every block's ``W a``: for each block, the fewest of its
    products whose (input part, weight part) pairs cover each of ``{a⁺, a⁻} × {W⁺, W⁻}`` exactly once."""
    slots: list[int] = []
    for position, block in enumerate(blocks):
        if not block.linear_forward:
            return None
        full = {(i, w) for i in _sign_parts(Identity(), nonnegative[block.src]) for w in (1, -1)}
        candidates = []
        for product, slot in products.items():
            inputs = _sign_parts(product.inputs, nonnegative[block.src])
            weights = _sign_parts(product.weights)
            if product.block == position and inputs is not None and weights is not None:
                candidates.append((slot, [(i, w) for i in inputs for w in weights]))
        cover = _exact_cover(candidates, full)
        if cover is None:
            return None
        slots += cover
    return tuple(slots) if slots else None


def _exact_cover(candidates: list[tuple[int, list]], full: set) -> list[int] | None:
    """The smallest set of candidates whose parts, together, are each element of ``full`` once."""
    for size in range(1, len(full) + 1):
        for chosen in itertools.combinations(candidates, size):
            parts = [part for _, covered in chosen for part in covered]
            if len(parts) == len(full) and set(parts) == full:
                return [slot for slot, _ in chosen]
    return None


def group_bias(group: Group, bias: Tensor | None) -> Tensor | None:
    """The group's bias term ``β_j = Σ_terms sign · f_b(b_j)`` (``None`` without bias)."""
    terms = [t for t in group.terms if not isinstance(t.bias, Zero)]
    if bias is None or not terms:
        return None
    return sum(t.sign * t.bias(bias) for t in terms)


def _is_forward_bias(group: Group, level: Level) -> bool:
    """Whether the group's bias term is the level's bias itself (or there is none)."""
    if level.bias is None:
        return True
    biased = [t for t in group.terms if not isinstance(t.bias, Zero)]
    return len(biased) == 1 and isinstance(biased[0].bias, Identity) and biased[0].sign == 1.0


def plan_level(graph: Graph, level: Level, groups: tuple[Group, ...], nonnegative: dict[int, bool]) -> LevelPlan:
    """Work out the plan of ``groups`` at ``level``; ``nonnegative[src]`` for every source level.

    Two plans are worked out: weights expanded (``W + γW⁻ = (1+γ)W − γW⁺``) for linear inputs
    only, and for every input; the one with fewer large products (:func:`plan_cost`) is taken,
    the first on a tie. For γ on a mixed-sign input the second needs 7 instead of 9: its products
    ``W a⁺`` and ``W a⁻`` sum to the forward's, and ``a⁺ ⊙ W⁺ᵀq − a⁻ ⊙ W⁺ᵀq`` is one product.
    """
    plans = [_plan_level(graph, level, groups, nonnegative, expand_all) for expand_all in (False, True)]
    return min(plans, key=lambda plan: plan_cost(plan, len(graph.incoming[level.index])))


def plan_cost(plan: LevelPlan, blocks: int) -> int:
    """Large products a plan needs: its products, redistributions and, unless derived, the forward's."""
    return len(plan.products) + len(plan.redistributions) + (blocks if plan.forward is None else 0)


def _plan_level(
    graph: Graph, level: Level, groups: tuple[Group, ...], nonnegative: dict[int, bool], expand_all: bool
) -> LevelPlan:
    blocks = graph.incoming[level.index]
    slots: dict[Product, int] = {}
    group_plans = []
    for group in groups:
        combinations = [combine(group.terms, 1.0, nonnegative[b.src], expand_all) for b in blocks]
        shared = all(b.linear_forward for b in blocks) and all(c == combinations[0] for c in combinations)
        linear = combinations[0].get(LINEAR, 0.0) if shared and blocks else 0.0
        if linear == 1.0 and len(combinations[0]) == 1 and _is_forward_bias(group, level):
            group_plans.append(GroupPlan(group, True, 1.0, (), None))
            continue
        per_node = group_bias(group, level.bias)
        if linear and level.bias is not None:
            per_node = -linear * level.bias if per_node is None else per_node - linear * level.bias
        parts = []
        for position, combination in enumerate(combinations):
            for (inputs, basis), coefficient in combination.items():
                if linear and (inputs, basis) == LINEAR:
                    continue
                slot = slots.setdefault(Product(position, inputs, basis), len(slots))
                parts.append((coefficient, slot))
        group_plans.append(GroupPlan(group, False, linear, tuple(parts), per_node))
    redistributions = []
    for position, block in enumerate(blocks):
        terms: dict[tuple[Transform, Transform], list[tuple[int, float]]] = {}
        for index, group in enumerate(groups):
            for key, coefficient in combine(group.terms, group.scale, nonnegative[block.src], expand_all).items():
                terms.setdefault(key, []).append((index, coefficient))
        redistributions += _merged(position, terms)
    return LevelPlan(tuple(slots), tuple(group_plans), tuple(redistributions), forward_products(slots, blocks, nonnegative))


def _merged(position: int, terms: dict[tuple[Transform, Transform], list[tuple[int, float]]]) -> list[Redistribution]:
    """One redistribution per weight basis and quotient combination: ``f(a) ⊙ Mᵀq + g(a) ⊙ Mᵀ(λq)``
    is ``(f(a) + λ g(a)) ⊙ Mᵀq``, one product instead of two."""
    merged: list[tuple[Transform, list[tuple[Transform, float]], tuple[tuple[int, float], ...]]] = []
    for (inputs, basis), items in terms.items():
        for weights, parts, reference in merged:
            factor = _proportional(items, reference) if weights == basis else None
            if factor is not None:
                parts.append((inputs, factor))
                break
        else:
            merged.append((basis, [(inputs, 1.0)], tuple(items)))
    return [Redistribution(position, parts[0][0] if len(parts) == 1 else InputCombination(tuple(parts)), basis, items)
            for basis, parts, items in merged]


def _proportional(items: list[tuple[int, float]], reference: tuple[tuple[int, float], ...]) -> float | None:
    """``λ`` with ``items = λ · reference`` exactly (same groups), else ``None``."""
    if [group for group, _ in items] != [group for group, _ in reference]:
        return None
    factor = items[0][1] / reference[0][1]
    return factor if all(c == factor * r for (_, c), (_, r) in zip(items, reference)) else None
