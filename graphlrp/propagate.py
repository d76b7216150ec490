"""The forward pass over the levels and LRP backwards over them."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Sequence

import torch
from torch import Tensor

from . import kernels
from .blocks import StaticBlock
from .errors import InputError
from .graph import Graph, Level
from .layout import is_node_major
from .plan import LevelPlan, effective_input, group_bias, splits_inputs_by_sign, uses_input_sign
from .rules import Group, Rule
from .transforms import Identity, Ones, Transform
from .workspace import Workspace


@dataclass
class Trace:
    """What the forward pass computed: per level, outputs ``(B, n)`` and pre-activations."""

    activations: list[Tensor]
    preactivations: list[Tensor | None]
    output: Tensor
    #: per-batch states of sample-dependent blocks, by ``id(block)``
    states: dict[int, object] = field(default_factory=dict)
    #: while explaining: each source level's input transforms, and the rule products the forward
    #: pass computed (by level, in the slots of the level's plan) for the redistribution to use
    inputs: dict[int, "_Inputs"] = field(default_factory=dict)
    products: dict[int, list[Tensor | None]] = field(default_factory=dict)
    #: the plan each level's rule follows in this batch, by level and rule, looked up once for both passes
    plans: dict[tuple[int, object], LevelPlan] = field(default_factory=dict)

    def state(self, block) -> object:
        """The state ``block.prepare`` returned in this forward pass (``None`` for most blocks)."""
        return self.states.get(id(block))

    def source(self, graph: Graph, level: int) -> "_Inputs":
        """The input transforms of source level ``level`` (made on first use, then shared)."""
        if level not in self.inputs:
            self.inputs[level] = _Inputs(graph.levels[level], self.activations[level])
        return self.inputs[level]

    def release(self) -> None:
        """Drop what only the explanation's own passes need."""
        self.inputs.clear()
        self.products.clear()
        self.plans.clear()


@dataclass
class LevelRecord:
    """How relevance crossed into one level's sources: the rule, its denominators and quotients.

    ``quotients[g]`` is ``s_j = R_j / stab(z_j)`` of the rule's group ``g`` (zero where the group
    does not serve ``j`` or the denominator is zero) and ``denominators[g]`` the unstabilized
    ``z_j``, both ``(B, n)``; every edge message and the level's balance are built from them.
    """

    rule: Rule
    groups: tuple[Group, ...]
    quotients: list[Tensor] = field(default_factory=list)
    denominators: list[Tensor] = field(default_factory=list)


def run_forward(graph: Graph, workspace: Workspace, x: Tensor, rules: Sequence[Rule | None] | None = None,
                check_finite: bool = True) -> Trace:
    """Compute every level's pre-activation and output for the batch ``x``.

    With ``rules`` (one per level, as :meth:`Composite.rules` gives them), a level whose rule's
    products add up to the forward product (:attr:`LevelPlan.forward`) is computed from them, and
    they are kept for the redistribution, where the workspace allows it
    (:meth:`Workspace.may_keep_products`); the result equals the plain forward up to rounding.
    ``check_finite=False`` leaves the test of ``x`` for NaN and inf to the caller.
    """
    graph.check_input(x, finite=check_finite)
    x = x.detach()  # the caller's tensor, without its autograd history (its values are only read)
    # the output is set once the last level is computed
    trace = Trace([graph.input_activations(x)], [None], output=x)
    for level in graph.levels[1:]:
        rule = None if rules is None or not workspace.may_keep_products(graph, level) else rules[level.index]
        z = None if rule is None else _sum_of_rule_products(graph, workspace, level, rule, trace)
        if z is None:
            z = graph.preactivation(level, trace.activations, trace.states, x)
        trace.preactivations.append(z)
        trace.activations.append(level.activation(z))
    trace.output = graph.gather_outputs(trace.activations)
    return trace


def _plan_for(graph: Graph, workspace: Workspace, level: Level, rule: Rule, trace: Trace) -> LevelPlan:
    """The level's plan for ``rule``, given which of its source levels are non-negative."""
    groups = rule.cached_groups()
    plan = trace.plans.get((level.index, groups))
    if plan is None:
        signs = splits_inputs_by_sign(groups.groups)
        sources = {block.src for block in graph.incoming[level.index]}
        nonnegative = {src: signs and trace.source(graph, src).nonnegative for src in sources}
        plan = trace.plans[level.index, groups] = workspace.plan(graph, level, groups, nonnegative)
    return plan


def _plan_product(graph: Graph, workspace: Workspace, level: Level, plan: LevelPlan, slot: int,
                  trace: Trace) -> Tensor:
    """Product ``slot`` of the level's plan."""
    product = plan.products[slot]
    block = graph.incoming[level.index][product.block]
    cache = workspace.operands(block)
    if isinstance(product.inputs, Ones) and isinstance(block, StaticBlock):  # one row for every sample
        return block.sums_over_sources(product.weights, cache).expand(len(trace.activations[block.src]), -1)
    value = trace.source(graph, block.src)(product.inputs)
    return block.matvec(value, product.weights, trace.state(block), cache)


def _sum_of_rule_products(graph: Graph, workspace: Workspace, level: Level, rule: Rule,
                          trace: Trace) -> Tensor | None:
    """The level's pre-activation as the sum of its rule's products, when they add up to it."""
    if not graph.incoming[level.index]:
        return None
    plan = _plan_for(graph, workspace, level, rule, trace)
    if plan.forward is None:
        return None
    products: list[Tensor | None] = [None] * len(plan.products)
    for slot in plan.forward:
        products[slot] = _plan_product(graph, workspace, level, plan, slot, trace)
    first, *rest = plan.forward
    z = products[first].clone() if not rest else torch.add(products[first], products[rest[0]])
    for slot in rest[1:]:
        z.add_(products[slot])
    if level.bias is not None:
        z.add_(level.bias)
    trace.products[level.index] = products
    return z


class _Inputs:
    """Input transforms of one source level, computed once per level and skipped when all zero."""

    def __init__(self, level: Level, activation: Tensor) -> None:
        self.level = level
        self.activation = activation
        self._cache: dict[Transform, Tensor | None] = {}

    @cached_property
    def nonnegative(self) -> bool:
        """Whether every value is ``>= 0``: known from the level's activation function, else on the
        CPU checked on first use (one pass over the level), elsewhere taken as unknown (``False``;
        a read of the device would cost more than the pass over the level it may save)."""
        if self.level.activation.nonnegative or self.activation.numel() == 0:
            return True
        if self.activation.device.type != "cpu":
            return False
        stored = self.activation.T if is_node_major(self.activation) else self.activation  # else a copy
        return bool(stored.min() >= 0)

    def effective(self, transform: Transform) -> Transform | None:
        """The transform that gives the same values here: ``None`` if they are all zero."""
        return effective_input(transform, uses_input_sign(transform) and self.nonnegative)

    def __call__(self, transform: Transform) -> Tensor | None:
        transform = self.effective(transform)
        if transform is None:
            return None
        if isinstance(transform, Identity):
            return self.activation
        if transform not in self._cache:
            shaped = self.activation.reshape(len(self.activation), *self.level.shape)
            try:
                value = transform(shaped)
            except RuntimeError as error:
                raise InputError(
                    f"input transform {transform!r} does not fit level {self.level.name!r} of shape {self.level.shape}: {error}"
                ) from None
            self._cache[transform] = value.reshape(len(self.activation), self.level.size)
        return self._cache[transform]


def _linear_combination(parts: list[tuple[float, Tensor]], per_node: Tensor | None, like: Tensor) -> Tensor:
    """``Σ c_k t_k + per_node`` in a new tensor of ``like``'s layout, one pass per part.

    When every part is the same row for every sample (products of an input of ones), so is the
    result: it is computed once and returned expanded.
    """
    if parts and all(_is_row(t) for _, t in parts):
        row = _linear_combination([(c, t[:1]) for c, t in parts], per_node, like[:1])
        return row.expand_as(like)
    if len(parts) == 1 and parts[0][0] == 1.0:  # one product as it is (products are never written to)
        product = parts[0][1]
        return product if per_node is None else torch.add(product, per_node, out=torch.empty_like(like))
    total = torch.empty_like(like)
    if not parts:
        total.zero_()
    elif len(parts) == 1:
        torch.mul(parts[0][1], parts[0][0], out=total)
    else:
        (c0, t0), (c1, t1) = parts[0], parts[1]
        if c0 == 1.0:
            torch.add(t0, t1, alpha=c1, out=total)
        else:
            torch.mul(t0, c0, out=total).add_(t1, alpha=c1)
        for coefficient, tensor in parts[2:]:
            total.add_(tensor, alpha=coefficient)
    return total if per_node is None else total.add_(per_node)


def _is_row(t: Tensor) -> bool:
    """Whether ``t (B, n)`` is one row expanded over the batch."""
    return t.shape[0] > 1 and t.stride(0) == 0


def _served(group: Group, z_forward: Tensor) -> Tensor | None:
    """``1.0`` where the group serves the node and ``0.0`` elsewhere, in ``z_forward``'s layout
    (``None``: it serves all). A float mask, because multiplying by it is many times faster than
    ``torch.where`` with a scalar."""
    if group.served == "all":
        return None
    compare = torch.gt if group.served == "positive" else torch.lt
    return compare(z_forward, 0, out=torch.empty_like(z_forward))


def redistribute_level(
    graph: Graph, workspace: Workspace, level: Level, rule: Rule, trace: Trace, relevance: list[Tensor],
    skipped: frozenset[int] = frozenset(),
) -> LevelRecord:
    """Move the relevance of ``level``'s nodes to the sources of its incoming edges under ``rule``.

    ``relevance`` holds one ``(B, n)`` tensor per level; the sources' entries are added to in place,
    except those of the levels ``skipped`` (their products are not made; the record is complete).
    The products the rule needs and how they combine come from the level's plan (:mod:`graphlrp.plan`).
    """
    z_forward = trace.preactivations[level.index]
    incoming = graph.incoming[level.index]
    groups = rule.cached_groups().groups
    plan = _plan_for(graph, workspace, level, rule, trace)
    r_level = relevance[level.index]
    record = LevelRecord(rule, groups)
    products = trace.products.pop(level.index, None) or [None] * len(plan.products)
    for group_plan in plan.groups:
        if group_plan.forward:
            denominator = z_forward  # the rule's denominator is the forward pre-activation itself
        else:
            parts = [(group_plan.linear, z_forward)] if group_plan.linear else []
            for coefficient, slot in group_plan.parts:
                if products[slot] is None:
                    products[slot] = _plan_product(graph, workspace, level, plan, slot, trace)
                parts.append((coefficient, products[slot]))
            denominator = _linear_combination(parts, group_plan.per_node, z_forward)
        record.denominators.append(denominator)
        record.quotients.append(_quotient(rule, group_plan.group, r_level, denominator, z_forward))
    for redistribution in plan.redistributions:
        block = incoming[redistribution.block]
        if block.src in skipped:
            continue
        factor, quotient = _combined_quotient(redistribution.terms, record.quotients)
        back = block.rmatvec(quotient, redistribution.weights, trace.state(block), workspace.operands(block))
        relevance[block.src].addcmul_(trace.source(graph, block.src)(redistribution.inputs), back, value=factor)
    workspace.level_done(graph, level)
    return record


def _combined_quotient(terms: tuple[tuple[int, float], ...], quotients: list[Tensor]) -> tuple[float, Tensor]:
    """``Σ coefficient · s_group`` as ``(factor, tensor)``: one group's quotient is passed with its
    coefficient as the factor (no pass over it), several are summed in one pass each."""
    (first, factor), *rest = terms
    if not rest:
        return factor, quotients[first]
    (second, coefficient), *others = rest
    total = torch.add(quotients[first], quotients[second], alpha=coefficient / factor)
    for group, coefficient in others:
        total.add_(quotients[group], alpha=coefficient / factor)
    return factor, total


def _quotient(rule: Rule, group: Group, r_level: Tensor, denominator: Tensor, z_forward: Tensor) -> Tensor:
    """``s_j = R_j / stab(z_j)`` where the group serves ``j``, else 0; a zero denominator gives 0.

    Relevance is masked before it is divided, so a node the group does not serve gives ``0 / stab``,
    never ``inf · 0``.
    """
    signed = rule.epsilon > 0 and rule.stabilizer == "signed"  # |stab(z)| >= ε: never zero
    if signed and not _is_row(denominator):
        fused = kernels.signed_quotient(r_level, denominator, rule.epsilon, group.served,
                                        None if group.served == "all" else z_forward)
        if fused is not None:
            return fused
    served = _served(group, z_forward)
    # a denominator that is the same for every sample (inputs of ones) is stabilized once
    stabilized = rule.stabilize(denominator[:1] if _is_row(denominator) else denominator)
    if signed:
        if served is not None:
            return served.mul_(r_level).div_(stabilized)
        # the stabilized denominator is a new tensor: the quotient takes its place unless it is one row
        reuse = stabilized is not denominator and not _is_row(denominator)
        return torch.div(r_level, stabilized, out=stabilized if reuse else None)
    zero = torch.eq(stabilized, 0, out=torch.empty_like(stabilized))  # 1.0 where the denominator is zero
    target = r_level if served is None else served.mul_(r_level)
    quotient = torch.div(target, stabilized.add(zero))  # divides by 1 where it is zero ...
    return quotient.addcmul_(quotient, zero, value=-1.0)  # ... and q − q = 0 there, q elsewhere


def level_balance(record: LevelRecord, level: Level, r_level: Tensor, z_forward: Tensor) -> dict[str, Tensor]:
    """Per sample: relevance in, out through the edges, absorbed by bias and stabilizer, dropped.

    Computed from the quotients and denominators kept in ``record``: with ``c_j`` the sum of the
    group's contributions into ``j`` (``denominator − β``), ``out = Σ_g scale Σ_j s_j c_j``.
    """
    zeros = r_level.new_zeros(len(r_level))
    out, bias_part, stab_part = zeros.clone(), zeros.clone(), zeros.clone()
    unkept = r_level.clone()  # per node: relevance no group passed on
    for group, quotient, denominator in zip(record.groups, record.quotients, record.denominators):
        beta = group_bias(group, level.bias)
        stabilized = record.rule.stabilize(denominator)
        contributions = denominator if beta is None else denominator - beta
        out += group.scale * (quotient * contributions).sum(1)
        if beta is not None:
            bias_part += group.scale * (quotient * beta).sum(1)
        stab_part += group.scale * (quotient * (stabilized - denominator)).sum(1)
        served = _served(group, z_forward)
        target = r_level if served is None else served.mul_(r_level)
        unkept -= group.scale * torch.where(stabilized != 0, target, 0.0)
    relevance_in = r_level.sum(1)
    return {"relevance_in": relevance_in, "relevance_out": out, "bias": bias_part, "stabilizer": stab_part,
            "dropped": unkept.sum(1)}
