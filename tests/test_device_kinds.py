"""Block kinds chosen by density are chosen again for the device a graph moves to, from that
device's threshold (a table, an override, or a cached calibration); kinds given are kept."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import calibration, rules, thresholds
from graphlrp.errors import InputError

from conftest import make_mlp


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """Every test reads and writes calibrations in a cache of its own."""
    monkeypatch.setenv("GRAPHLRP_CACHE_DIR", str(tmp_path / "cache"))


def pruned_mlp(densities: list[float], seed: int = 0) -> nn.Sequential:
    """An MLP 40 → 30 → 20 → 5 whose Linear layers keep the given fractions of their weights."""
    model = make_mlp([40, 30, 20, 5], seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, density in zip([m for m in model if isinstance(m, nn.Linear)], densities):
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=generator) < density)
    return model


def kinds(graph: graphlrp.Graph) -> list[str]:
    return [block.kind for block in graph.blocks]


def test_the_table_gives_the_cpu_value_and_a_lower_gpu_start():
    assert thresholds.sparse_density("cpu") == thresholds.DEFAULT_THRESHOLDS["cpu"] == 0.2
    assert thresholds.sparse_density("cuda:0") == thresholds.DEFAULT_THRESHOLDS["cuda"] < 0.2
    assert thresholds.sparse_density("meta") == 0.2  # a type without an entry takes the CPU's


def test_lowering_holds_a_matrix_sparse_at_or_below_the_threshold():
    model = pruned_mlp([0.1, 0.5, 1.0])
    x = torch.rand(3, 40, dtype=torch.float64)
    assert kinds(graphlrp.lower(model, x)) == ["sparse", "dense", "dense"]
    with thresholds.override("cpu", 0.6):
        assert kinds(graphlrp.lower(model, x)) == ["sparse", "sparse", "dense"]
    assert all(block.automatic_kind for block in graphlrp.lower(model, x).blocks)
    assert not any(block.automatic_kind for block in graphlrp.lower(model, x, block_kind="dense").blocks)


@pytest.mark.parametrize("rule", [rules.Epsilon(1e-6), rules.Gamma(0.25), rules.AlphaBeta(2, 1)], ids=str)
def test_a_graph_moved_where_the_threshold_differs_converts_its_blocks_exactly(rule):
    model = pruned_mlp([0.1, 0.5, 1.0])
    x = torch.rand(4, 40, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    with thresholds.override("cpu", 0.6):
        moved = graph.to("cpu")
    assert kinds(graph) == ["sparse", "dense", "dense"] and kinds(moved) == ["sparse", "sparse", "dense"]
    assert all(block.automatic_kind for block in moved.blocks)
    for before, after in zip(graph.edges(), moved.edges()):
        assert torch.equal(before, after)  # the same edges, in the same order
    expected = graphlrp.explain(graph, x, target=2, rule=rule)
    got = graphlrp.explain(moved, x, target=2, rule=rule)
    torch.testing.assert_close(got.input_relevance, expected.input_relevance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got.edge_relevance(0), expected.edge_relevance(0), rtol=1e-12, atol=1e-14)
    with thresholds.override("cpu", 0.05):
        assert kinds(moved.to(dtype=torch.float32)) == ["dense", "dense", "dense"]


def test_kinds_given_at_lowering_are_kept():
    model = pruned_mlp([0.1, 0.5, 1.0])
    x = torch.rand(2, 40, dtype=torch.float64)
    for kind in ("dense", "sparse", "edges"):
        graph = graphlrp.lower(model, x, block_kind=kind)
        for density in (0.0, 1.0):
            with thresholds.override("cpu", density):
                assert kinds(graph.to("cpu", dtype=torch.float32)) == [kind] * 3


def test_a_graph_moved_to_another_device_type_takes_its_threshold():
    """On ``meta`` (no reads there), converted on the way, before moving."""
    model = pruned_mlp([0.1, 0.5, 1.0])
    graph = graphlrp.lower(model, torch.rand(2, 40, dtype=torch.float64))
    with thresholds.override("meta", 1.0):
        moved = graph.to("meta")
    assert kinds(moved) == ["sparse"] * 3
    assert all(block.device.type == "meta" for block in moved.blocks)
    assert [b.num_edges for b in moved.blocks] == [b.num_edges for b in graph.blocks]
    with thresholds.override("meta", 0.0):
        assert kinds(graph.to("meta")) == ["dense"] * 3


def test_a_cached_calibration_sets_the_threshold_of_its_device(tmp_path):
    path = thresholds.calibration_file()
    assert str(path).startswith(str(tmp_path)) and torch.__version__ in path.name
    thresholds.save_calibration(thresholds.device_name("cpu"), {"sparse_density": 0.55})
    assert json.loads(path.read_text())[thresholds.device_name("cpu")]["sparse_density"] == 0.55
    assert thresholds.sparse_density("cpu") == 0.55
    model = pruned_mlp([0.1, 0.5, 1.0])
    assert kinds(graphlrp.lower(model, torch.rand(2, 40, dtype=torch.float64))) == ["sparse", "sparse", "dense"]
    with thresholds.override("cpu", 0.01):  # an override comes first
        assert thresholds.sparse_density("cpu") == 0.01


def test_calibrate_measures_and_caches_a_threshold_for_the_device():
    result = calibration.calibrate("cpu", size=64, batches=(1, 4), densities=(0.05, 0.5), repeats=1)
    assert set(result.crossovers) == {"1", "4"} and all(c in (0.0, 0.05, 0.5) for c in result.crossovers.values())
    assert result.sparse_density == pytest.approx(sum(result.crossovers.values()) / 2)
    assert set(result.seconds) == {"1/0.05", "1/0.5", "4/0.05", "4/0.5"}
    assert thresholds.sparse_density("cpu") == result.sparse_density
    cached = json.loads(thresholds.calibration_file().read_text())[result.device_name]
    assert cached["torch_version"] == torch.__version__ and cached["sparse_density"] == result.sparse_density


def test_the_crossover_separates_where_csr_wins_from_where_it_loses():
    densities = (0.01, 0.1, 0.2, 0.5)
    dense = [1, 1, 1, 1]
    assert calibration.crossover(densities, dense, [0.1, 0.9, 1.5, 1.2]) == 0.1
    assert calibration.crossover(densities, dense, [2, 2, 2, 2]) == 0.0
    assert calibration.crossover(densities, dense, [1, 1, 1, 1]) == 0.5  # as fast counts as a win
    assert calibration.crossover(densities, dense, [0.1, 3.0, 0.5, 2.0]) == 0.2  # one disturbed timing
    assert calibration.crossover(densities, dense, [2, 0.1, 0.1, 0.1]) == 0.5  # one loss below three wins


def test_bad_thresholds_and_calibrations_are_refused():
    with pytest.raises(InputError, match=r"density must be a number in \[0, 1\], got 1.5"):
        with thresholds.override("cpu", 1.5):
            pass
    with pytest.raises(InputError, match="densities must be ascending"):
        calibration.calibrate("cpu", densities=(0.5, 0.1), save=False)
    with pytest.raises(InputError, match="batches=\\(\\)"):
        calibration.calibrate("cpu", batches=(), save=False)
    assert thresholds.sparse_density("cpu") == 0.2
