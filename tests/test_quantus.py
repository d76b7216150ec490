"""graphlrp.evaluation.explain_func: Quantus's signature, the graph cache, and pixel flipping.

The pixel-flipping test trains the small CNN of ``examples/digits_cnn.py`` on scikit-learn's
digits (seeded, about two seconds) and runs Quantus's ``PixelFlipping`` on 30 test digits: the
target logit, as the most relevant pixels are set to the baseline 0 first, must fall faster
(a smaller area under the curve) with graphlrp's ε and z⁺ explanations than with random ones.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import graphlrp
from graphlrp import composites, rules
from graphlrp.evaluation import explain_func, lowered

#: digits explained by the pixel-flipping test
FLIPPED = 30
#: seeds of the random baseline explanation
RANDOM_SEEDS = range(5)


def make_cnn() -> nn.Sequential:
    """The CNN of ``examples/digits_cnn.py``."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor]:
    """The CNN trained for 15 epochs on 80% of the digits, and the other 20%, ``(n, 1, 8, 8)`` in [0, 1]."""
    torch.manual_seed(0)
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[: int(0.8 * len(x))], order[int(0.8 * len(x)):]
    model = make_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for batch in train[torch.randperm(len(train))].split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        assert float((model(x[test]).argmax(1) == y[test]).float().mean()) > 0.9
    return model, x[test]


def random_explain_func(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, seed: int = 0,
                        **kwargs: object) -> np.ndarray:
    """A baseline explanation: uniform random relevance, shaped like the inputs."""
    return np.random.default_rng(seed).random(inputs.shape).astype(np.float32)


def area_under_curves(curves: list[list[float]]) -> float:
    """Mean over samples of the trapezoidal area under each curve (unit steps).

    Computed here: Quantus 0.6's own ``calculate_auc`` calls ``np.trapz``, which NumPy 2.4 removed.
    """
    return float(np.trapezoid(np.asarray(curves), axis=1).mean())


def test_explain_func_gives_graphlrps_input_relevance(digits):
    model, x = digits
    batch = x[:8]
    target = np.arange(8) % 10
    expected = graphlrp.explain(graphlrp.lower(model, batch), batch, target=torch.from_numpy(target),
                                composite=composites.EpsilonPlus()).input_relevance
    for composite in ("EpsilonPlus", composites.EpsilonPlus()):
        relevance = explain_func(model=model, inputs=batch.numpy(), targets=target, composite=composite, device="cpu")
        assert isinstance(relevance, np.ndarray) and relevance.shape == tuple(batch.shape)
        np.testing.assert_allclose(relevance, expected.numpy(), rtol=1e-6, atol=1e-9)
    by_name = explain_func(model, batch.numpy(), target, rule="zplus")
    by_object = explain_func(model, batch.numpy(), target, rule=rules.ZPlus())
    np.testing.assert_array_equal(by_name, by_object)


def test_graph_is_kept_until_the_weights_change():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    x = torch.rand(6, 5)
    first = lowered(model, x)
    assert lowered(model, torch.rand(2, 5)) is first  # any batch of the same sample shape
    assert lowered(model, x, block_kind="dense") is not first
    with torch.no_grad():
        model[0].weight.mul_(-2.0)  # in place, as an optimizer step or a randomisation test does
    again = lowered(model, x)
    assert again is not first
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_unknown_names_are_refused(digits):
    model, x = digits
    with pytest.raises(ValueError, match="unknown rule 'lrp-0'; known names: epsilon, zplus"):
        explain_func(model, x[:2].numpy(), np.zeros(2, dtype=int), rule="lrp-0")
    with pytest.raises(ValueError, match="unknown composite 'EpsilonGammaBox'"):
        explain_func(model, x[:2].numpy(), np.zeros(2, dtype=int), composite="EpsilonGammaBox")


@pytest.mark.filterwarnings("ignore:The settings for perturbing input")  # flipping a pixel that is already 0
def test_pixel_flipping_falls_faster_than_random(digits):
    quantus = pytest.importorskip("quantus")
    model, x = digits
    batch = x[:FLIPPED]
    with torch.no_grad():
        predicted = model(batch).argmax(1).numpy()
    metric = quantus.PixelFlipping(perturb_baseline="black", disable_warnings=True, display_progressbar=False)

    def area(explain, **kwargs: object) -> float:
        curves = metric(model=model, x_batch=batch.numpy(), y_batch=predicted, explain_func=explain,
                        explain_func_kwargs=kwargs, softmax=False, channel_first=True, device="cpu")
        assert np.asarray(curves).shape == (FLIPPED, 64)  # one step per pixel
        return area_under_curves(curves)

    random_areas = [area(random_explain_func, seed=seed) for seed in RANDOM_SEEDS]
    epsilon_area = area(explain_func, rule=rules.Epsilon(0.01))
    zplus_area = area(explain_func, composite="EpsilonPlus")
    assert epsilon_area < min(random_areas), (epsilon_area, random_areas)
    assert zplus_area < min(random_areas), (zplus_area, random_areas)
