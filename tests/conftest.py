"""Shared fixtures: reference models and the block kinds / reduction backends to run them on."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

from graphlrp import reductions

#: (block kind, reduction backend) pairs every agreement test runs on; the edge-list kind
#: reduces with each available backend (native torch, and torch_scatter when installed)
KERNELS = [("dense", "torch"), ("sparse", "torch")] + [("edges", name) for name in reductions.available_backends()]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="also run the tests marked slow (every torchvision model, multi-process runs, ...)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked slow unless ``--slow`` is given or ``GRAPHLRP_SLOW=1`` is set."""
    if config.getoption("--slow") or os.environ.get("GRAPHLRP_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --slow or GRAPHLRP_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def empty_calibration_cache(tmp_path_factory):
    """Lowering reads thresholds calibrated on this machine from the cache (graphlrp.thresholds):
    the suite runs with an empty cache of its own, whatever the user has calibrated."""
    previous = os.environ.get("GRAPHLRP_CACHE_DIR")
    os.environ["GRAPHLRP_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphlrp-cache"))
    yield
    if previous is None:
        del os.environ["GRAPHLRP_CACHE_DIR"]
    else:
        os.environ["GRAPHLRP_CACHE_DIR"] = previous


@pytest.fixture(params=KERNELS, ids=[f"{k}-{b}" for k, b in KERNELS])
def kernel(request):
    """Yield a block kind with its reduction backend selected."""
    kind, backend = request.param
    with reductions.backend(backend):
        yield kind


def make_mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, bias: bool = True, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """A dense network ``Linear → activation → … → Linear`` with random weights."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(activation())
    model = nn.Sequential(*layers).to(dtype).eval()
    if bias:
        with torch.no_grad():
            for layer in model:
                if isinstance(layer, nn.Linear):
                    layer.bias.normal_(0, 0.5)
    return model
