"""The deterministic mode: torch's settings for it while active, every one restored after, and
relevance bit for bit the same from run to run."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import reductions, rules
from graphlrp.determinism import CUBLAS_WORKSPACE, Settings
from graphlrp.errors import ArgumentTypeError, DeviceError

from conftest import make_mlp


@pytest.fixture
def nondeterministic_settings(monkeypatch):
    """torch's settings as a user might have them (TF32, cuDNN benchmark, no workspace setting);
    put back as they were after the test."""
    original = Settings.current()
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    chosen = Settings(False, False, False, True, "tf32", "tf32", None)
    chosen.apply()
    yield chosen
    original.apply()


def test_the_mode_sets_each_setting_and_restores_it(nondeterministic_settings):
    with graphlrp.deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert Settings.current() == nondeterministic_settings


def test_settings_are_restored_after_an_error_and_after_nesting(nondeterministic_settings):
    with pytest.raises(KeyError):
        with graphlrp.deterministic():
            raise KeyError("inside")
    assert Settings.current() == nondeterministic_settings
    with graphlrp.deterministic(warn_only=True):
        outer = Settings.current()
        assert outer.warn_only
        with graphlrp.deterministic():
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert Settings.current() == outer
    assert Settings.current() == nondeterministic_settings


def test_a_user_workspace_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with graphlrp.deterministic():
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def cnn() -> nn.Module:
    torch.manual_seed(0)

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.pool, self.head = nn.MaxPool2d(3, stride=1, padding=1), nn.Linear(4 * 6 * 6, 5)

        def forward(self, x):
            h = torch.relu(self.conv1(x))
            h = self.pool(h) + torch.relu(self.conv2(h))
            return self.head(h.flatten(1))

    return Residual().double().eval()


@pytest.mark.parametrize("backend", reductions.available_backends())
@pytest.mark.parametrize("kind", ["auto", "edges"])
def test_relevance_repeats_bit_for_bit(kind, backend):
    x = torch.rand(6, 2, 6, 6, dtype=torch.float64)
    graph = graphlrp.lower(cnn(), x, block_kind=kind)
    composite = graphlrp.composites.EpsilonGammaBox(low=0.0, high=1.0)
    with reductions.backend(backend):
        plain = graphlrp.explain(graph, x, target=[0, 1, 2, 3, 4, 0], composite=composite)
        runs = [graphlrp.Explainer(graph, composite=composite, deterministic=True)(x, target=[0, 1, 2, 3, 4, 0])
                for _ in range(3)]
        runs.append(graphlrp.explain(graph, x, target=[0, 1, 2, 3, 4, 0], composite=composite, deterministic=True))
    for run in runs[1:]:
        assert torch.equal(run.node_relevance, runs[0].node_relevance)
        assert torch.equal(run.edge_relevance(0), runs[0].edge_relevance(0))
    torch.testing.assert_close(runs[0].node_relevance, plain.node_relevance, rtol=1e-12, atol=1e-14)


def test_auto_takes_native_reductions_in_the_mode(monkeypatch):
    monkeypatch.setattr(reductions, "_cuda_kernels", lambda: True)  # as with a CUDA build of torch_scatter
    assert reductions.backend_for("cuda") == "torch_scatter"
    with graphlrp.deterministic():
        assert reductions.backend_for("cuda") == "torch"
    assert reductions.backend_for("cpu") == "torch"


@pytest.mark.skipif("torch_scatter" not in reductions.available_backends(), reason="needs torch_scatter")
def test_a_torch_scatter_without_cuda_kernels_is_refused_for_cuda_tensors():
    assert not reductions.has_cuda_kernels()  # the build here was made without a GPU
    with reductions.backend("torch_scatter"):
        assert reductions.backend_for("cpu") == "torch_scatter"
        with pytest.raises(DeviceError, match="'torch_scatter' was selected for a CUDA tensor, but the installed "
                                              "torch_scatter was built without CUDA kernels; select 'torch'"):
            reductions.backend_for("cuda:0")
    assert reductions.backend_for("cuda") == "torch"  # 'auto' does not take it


def test_the_flat_scatter_adds_as_scatter_add_along_the_last_dimension():
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, 5, (3, 4, 9), generator=generator)  # many repeats per row
    values = torch.randn(3, 4, 9, dtype=torch.float64, generator=generator)
    expected = torch.zeros(3, 4, 5, dtype=torch.float64)
    for b, c, e in torch.cartesian_prod(torch.arange(3), torch.arange(4), torch.arange(9)).tolist():
        expected[b, c, index[b, c, e]] += values[b, c, e]
    got = reductions.flat_scatter_add_(torch.zeros(3, 4, 5, dtype=torch.float64), index, values)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(reductions.scatter_add_last_(torch.zeros(3, 4, 5, dtype=torch.float64), index, values),
                               expected, rtol=1e-15, atol=1e-15)


def test_bad_options_are_refused():
    with pytest.raises(ArgumentTypeError, match="warn_only must be True or False, got 'yes'"):
        with graphlrp.deterministic(warn_only="yes"):
            pass
    graph = graphlrp.lower(make_mlp([3, 2]), torch.rand(1, 3, dtype=torch.float64))
    with pytest.raises(ArgumentTypeError, match="deterministic must be True or False, got 1"):
        graphlrp.explain(graph, torch.rand(1, 3, dtype=torch.float64), target=0, deterministic=1)
    with pytest.raises(ArgumentTypeError, match="deterministic must be True or False, got None"):
        graphlrp.Explainer(graph, rule=rules.Epsilon(), deterministic=None)
