"""The stabilizer and the quotients ``R / stab(z)``, bit for bit against the formulas."""
from __future__ import annotations

import pytest
import torch

from graphlrp import rules
from graphlrp.propagate import _quotient
from graphlrp.rules import Group


def _denominators(dtype: torch.dtype) -> torch.Tensor:
    """Both zeros, values near ±ε, tiny and large values, in both layouts' worth of shapes."""
    special = torch.tensor([0.0, -0.0, 1e-6, -1e-6, 5e-7, -5e-7, 1e-30, -1e-30, 3.0, -3.0], dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(6, 10, generator=generator, dtype=dtype) * 10.0 ** torch.randint(-8, 3, (6, 10), generator=generator)
    return torch.cat([special[None], random])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epsilon", [1e-6, 0.25])
def test_signed_stabilizer_adds_epsilon_with_the_sign_of_z_rounded_once(dtype, epsilon):
    z = _denominators(dtype)
    # Zennit's stabilizer: z + ε·s(z), s(z) = +1 for z >= 0 (both zeros), else −1
    sign = torch.tensor([1.0 if float(v) >= 0 else -1.0 for v in z.flatten()], dtype=dtype).reshape(z.shape)
    expected = z + sign * torch.tensor(epsilon, dtype=dtype)
    actual = rules.Epsilon(epsilon).stabilize(z)
    assert torch.equal(actual, expected)
    assert not bool((actual == 0).any())
    assert torch.equal(torch.signbit(actual[0, :2]), torch.tensor([False, False]))  # s(-0.0) = +1


@pytest.mark.parametrize("served", ["all", "positive", "negative"])
@pytest.mark.parametrize("rule", [rules.Epsilon(1e-6), rules.Epsilon(0.0), rules.Epsilon(1e-6, stabilizer="plain")])
def test_quotient_masks_before_dividing_and_zero_denominators_give_zero(served, rule):
    z = _denominators(torch.float32)
    if rule.stabilizer == "plain":
        z[0, 3] = -rule.epsilon  # stabilizes to exactly zero
    relevance = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    z_forward = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    group = Group((), served=served)
    quotient = _quotient(rule, group, relevance, z, z_forward)
    stabilized = rule.stabilize(z)
    keep = {"all": torch.ones_like(z, dtype=torch.bool), "positive": z_forward > 0, "negative": z_forward < 0}[served]
    for value, r, s, k in zip(quotient.flatten().tolist(), relevance.flatten().tolist(),
                              stabilized.flatten().tolist(), keep.flatten().tolist()):
        expected = 0.0 if not k or s == 0 else float(torch.tensor(r) / torch.tensor(s))
        assert value == expected
    assert bool(torch.isfinite(quotient).all())
