"""Write a new LRP rule as an edge-weight transform in a few lines.

A rule is a set of terms ``sign · f_in(a_i) · f_w(w_ij)`` (plus a bias term) that share one
denominator. This one, "z-abs", distributes by the magnitude of each contribution:
``c_ij = a_i⁺ |w_ij|`` — every transform is a named, hashable object, so blocks can cache the
transformed weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

import graphlrp
from graphlrp.rules import Group, Rule, Term
from graphlrp.transforms import Positive, Transform, Zero


@dataclass(frozen=True)
class Magnitude(Transform):
    """``|w|`` (maps 0 to 0, so absent connections stay absent)."""

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return values.abs()


class ZAbs(Rule):
    """``c_ij = a_i⁺ |w_ij|``, no bias term."""

    def groups(self) -> tuple[Group, ...]:
        return (Group((Term(inputs=Positive(), weights=Magnitude(), bias=Zero()),)),)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(2, 6)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=0, rule=ZAbs(epsilon=1e-9))
    print("rule:", ZAbs(epsilon=1e-9))
    print("input relevance:\n", explanation.input_relevance)
    print("sum of input relevance:", explanation.input_relevance.sum(1))
    print("target logit:          ", explanation.output[:, 0].detach())


if __name__ == "__main__":
    main()
