"""Independent references: a node-by-node evaluator of an edge-list network, gradient × input, path
enumeration. Written from the definitions, sharing no code with graphlrp."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

#: activations by graphlrp's names, written out from their definitions
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda z: z,
    "relu": lambda z: torch.where(z > 0, z, torch.zeros_like(z)),
    "tanh": lambda z: 2 / (1 + torch.exp(-2 * z)) - 1,
    "sigmoid": lambda z: 1 / (1 + torch.exp(-z)),
    "abs": lambda z: torch.where(z >= 0, z, -z),
    "leaky_relu": lambda z: torch.where(z > 0, z, 0.01 * z),
    "elu": lambda z: torch.where(z > 0, z, torch.exp(z) - 1),
    "square": lambda z: z * z,
}
#: activations under which LRP-0 equals gradient × input (positively homogeneous, piecewise linear)
HOMOGENEOUS = ("identity", "relu", "leaky_relu")


def evaluate_dag(n: int, edges: Sequence[tuple[int, int, float]], bias: Sequence[float], activation: Sequence[str],
                 inputs: Sequence[int], outputs: Sequence[int], x: Tensor) -> Tensor:
    """``(B, len(outputs))``: node ``j`` is ``activation_j(Σ w_ij a_i + b_j)``, inputs hold the columns of ``x``.

    Nodes are visited in a topological order found here (Kahn's algorithm); parallel edges add up.
    Differentiable in ``x``.
    """
    incoming: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    indegree = [0] * n
    for s, d, w in edges:
        incoming[d].append((s, w))
        indegree[d] += 1
    values: list[Tensor | None] = [None] * n
    for column, node in enumerate(inputs):
        values[node] = x[:, column]
    ready = [v for v in range(n) if indegree[v] == 0]
    remaining = list(indegree)
    order = []
    while ready:
        v = ready.pop()
        order.append(v)
        for s, d, _ in edges:
            if s == v:
                remaining[d] -= 1
                if remaining[d] == 0:
                    ready.append(d)
    assert len(order) == n, "the reference got a cyclic network"
    input_set = set(inputs)
    for v in order:
        if v in input_set:
            continue
        z = torch.full((len(x),), float(bias[v]), dtype=x.dtype)
        for s, w in incoming[v]:
            z = z + w * values[s]
        values[v] = ACTIVATIONS[activation[v]](z)
    return torch.stack([values[o] for o in outputs], 1)


def gradient_times_input(function: Callable[[Tensor], Tensor], x: Tensor, target: Sequence[int]) -> Tensor:
    """``x · ∂f_t/∂x`` per sample, ``t`` that sample's target (LRP-0's value on homogeneous nets without bias)."""
    x = x.detach().clone().requires_grad_(True)
    out = function(x).reshape(len(x), -1)
    chosen = out.gather(1, torch.as_tensor(list(target), dtype=torch.long).reshape(-1, 1))
    if not chosen.requires_grad:  # the output does not depend on x
        return torch.zeros_like(x).detach()
    (gradient,) = torch.autograd.grad(chosen.sum(), x, allow_unused=True)
    return torch.zeros_like(x).detach() if gradient is None else (gradient * x).detach()


def all_paths(src: Sequence[int], dst: Sequence[int], starts: set[int], goal: int) -> list[list[int]]:
    """Every path, as a list of edge positions, from a node of ``starts`` to ``goal``."""
    into: dict[int, list[int]] = {}
    for e, d in enumerate(dst):
        into.setdefault(d, []).append(e)
    paths: list[list[int]] = []

    def walk(node: int, suffix: list[int]) -> None:
        if node in starts:
            paths.append(suffix)
        for e in into.get(node, []):
            walk(src[e], [e] + suffix)

    walk(goal, [])
    return [p for p in paths if p]


def path_scores(paths: list[list[int]], messages: Sequence[float], relevance: Sequence[float], dst: Sequence[int],
                goal: int, score: str) -> list[float]:
    """Each path's score: ``R_t · Π m_e / R_dst(e)`` (0 where ``R_dst = 0``) or ``Σ |m_e|``."""
    values = []
    for path in paths:
        if score == "sum":
            values.append(sum(abs(messages[e]) for e in path))
        else:
            fractions = [messages[e] / relevance[dst[e]] if relevance[dst[e]] != 0 else 0.0 for e in path]
            values.append(relevance[goal] * math.prod(fractions))
    return values
