"""``graphlrp.aggregate``: sums over a data set against per-sample explanations and autograd references."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import prune

import graphlrp
from graphlrp import composites, rules
from graphlrp.aggregation import operands
from graphlrp.aggregation.sums import separable
from graphlrp.errors import ArgumentTypeError, FileFormatError, GraphTooLargeError, InputError

from conftest import make_mlp
from test_cnn import Concatenation, LeNet, Residual, randomize_batch_norms

#: measured errors against the per-sample references are ≤ 5e-16 (relative to the largest value)
TOLERANCE = 1e-13

RULES = {
    "epsilon": lambda: rules.Epsilon(0.01),
    "zplus": rules.ZPlus,
    "alphabeta": lambda: rules.AlphaBeta(2.0, 1.0),
    "gamma": lambda: rules.Gamma(0.25),
    "wsquare": rules.WSquare,
    "flat": rules.Flat,
    "zbox": lambda: rules.ZBox(-1.0, 1.0),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, 1e-300)
    error = float((actual - expected).abs().max()) / scale if expected.numel() else 0.0
    assert actual.shape == expected.shape and error <= tolerance, f"relative error {error:.3g} > {tolerance}"


@functools.lru_cache(maxsize=None)
def network(name: str, seed: int = 0) -> tuple[graphlrp.Graph, torch.Tensor, torch.Tensor]:
    """(graph, inputs, per-sample targets) of a small float64 network (made once per test session)."""
    torch.manual_seed(seed)
    if name in ("dense", "sparse", "edges"):
        model, x = make_mlp([6, 8, 5, 3], seed=seed), torch.randn(11, 6, dtype=torch.float64)
        return graphlrp.lower(model, x, block_kind=name), x, torch.arange(11) % 3
    if name == "pooled":
        model, x = LeNet(), torch.randn(7, 1, 12, 12)
    elif name == "residual":
        model, x = Residual(), torch.randn(7, 2, 6, 6)
        randomize_batch_norms(model)
    elif name == "concatenating":
        model, x = Concatenation(), torch.randn(7, 1, 8, 8)
    elif name == "winners":  # max-pool winners in windows inside the input (strided, dilated) and over padding
        features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, dilation=2),
                                 nn.MaxPool2d(2, padding=1), nn.Flatten())
        x = torch.randn(7, 1, 15, 15)
        model = nn.Sequential(*features, nn.Linear(features(x).shape[1], 3))
    else:  # "conv": strides, dilation, groups and proportional max pooling
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, groups=2),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
        x = torch.randn(7, 2, 9, 9)
    model, x = model.double().eval(), x.double()
    graph = graphlrp.lower(model, x, max_pool="proportional" if name == "conv" else "winner")
    return graph, x, torch.arange(len(x)) % 3


def per_sample_sums(graph, x, target, absolute=False, **rule):
    """Node and edge relevance summed over the samples of one explanation of the whole batch."""
    explanation = graphlrp.explain(graph, x, target=target, **rule)
    nodes, edges = explanation.node_relevance, explanation.edge_relevance()
    if absolute:
        nodes, edges = nodes.abs(), edges.abs()
    return nodes.sum(0), edges.sum(0)


# -- node and edge sums against per-sample explanations -------------------------------------------
@pytest.mark.parametrize("absolute", [False, True], ids=["signed", "absolute"])
@pytest.mark.parametrize("name", ["dense", "sparse", "edges", "conv", "pooled", "winners", "residual", "concatenating"])
def test_node_and_edge_sums_equal_per_sample_explanations(name, absolute):
    graph, x, target = network(name)
    for rule in RULES.values():
        found = graphlrp.aggregate(graph, x, target, rule=rule(), batch_size=4, absolute=absolute, progress=False)
        nodes, edges = per_sample_sums(graph, x, target, absolute, rule=rule())
        assert found.count == len(x)
        assert found.node_relevance.dtype == torch.float64
        assert_close(found.node_relevance, nodes)
        assert_close(found.edge_relevance(), edges)


@pytest.mark.parametrize("by_class", [False, True], ids=["together", "by-class"])
@pytest.mark.parametrize("absolute", [False, True], ids=["signed", "absolute"])
@pytest.mark.parametrize("name", ["dense", "sparse", "edges", "conv", "pooled", "residual"])
def test_operands_gathered_over_batches_give_the_per_sample_sums(name, absolute, by_class, monkeypatch):
    """Every block's operands gathered (rows of 2 batches of 2 samples and their terms), multiplied
    when the gathering is full and at the end of each chunk of 5 samples."""
    monkeypatch.setattr(operands, "GATHER_DENSITY", 0)
    monkeypatch.setattr(operands, "GATHER_ROWS", 4)
    appended = []
    append = operands.Gathering.append
    monkeypatch.setattr(operands.Gathering, "append", lambda self, *a: (appended.append(1), append(self, *a)))
    graph, x, target = network(name)
    for rule in RULES.values():
        found = graphlrp.aggregate(graph, x, target, rule=rule(), batch_size=2, chunk_size=5, absolute=absolute,
                                   by_class=by_class, progress=False)
        for k in range(3) if by_class else [None]:
            rows = slice(None) if k is None else target == k
            nodes, edges = per_sample_sums(graph, x[rows], target[rows], absolute, rule=rule())
            assert_close(found.node_relevance if k is None else found.node_relevance[k], nodes)
            assert_close(found.edge_relevance() if k is None else found.edge_relevance()[k], edges)
    assert appended


@pytest.mark.parametrize("absolute", [False, True], ids=["signed", "absolute"])
@pytest.mark.parametrize("name", ["pooled", "residual", "concatenating"])
def test_composite_sums_equal_per_sample_explanations(name, absolute):
    graph, x, target = network(name)
    composite = composites.EpsilonGammaBox(low=-3.0, high=3.0)
    found = graphlrp.aggregate(graph, x, target, composite=composite, batch_size=3, absolute=absolute, progress=False)
    nodes, edges = per_sample_sums(graph, x, target, absolute, composite=composite)
    assert_close(found.node_relevance, nodes)
    assert_close(found.edge_relevance(), edges)


def test_which_rules_sum_magnitudes_per_term():
    for name in ("epsilon", "zplus", "alphabeta", "gamma", "wsquare", "flat"):
        assert separable(RULES[name]().groups()), name
    assert not separable(rules.ZBox(-1.0, 1.0).groups())
    assert separable(rules.Pass().groups()) and separable(rules.Norm().groups())


def test_float32_graph_sums_in_float64():
    graph, x, target = network("dense")
    graph32 = graph.to(dtype=torch.float32)
    found = graphlrp.aggregate(graph32, x.float(), target, batch_size=4, progress=False)
    nodes, edges = per_sample_sums(graph, x, target)
    assert found.edge_relevance().dtype == torch.float64
    assert_close(found.edge_relevance(), edges, 1e-5)
    assert_close(found.node_relevance, nodes, 1e-5)


# -- per-parameter sums ----------------------------------------------------------------------------
def _edges_per_parameter(graph, position, weight_shape):
    """For every edge of block ``position``, the flat index of the weight it uses, found from the
    edge's end points alone (convolution geometry recomputed here)."""
    block = graph.blocks[position]
    src, dst, _ = (t.numpy() for t in block.edges())
    if len(weight_shape) == 2:
        return dst * weight_shape[1] + src
    c_out, c_in_group, kh, kw = weight_shape
    _, h_in, w_in = block.in_shape
    _, h_out, w_out = block.out_shape
    o, rest = np.divmod(dst, h_out * w_out)
    py, px = np.divmod(rest, w_out)
    c, rest = np.divmod(src, h_in * w_in)
    iy, ix = np.divmod(rest, w_in)
    ky = (iy - py * block.stride[0] + block.padding[0]) // block.dilation[0]
    kx = (ix - px * block.stride[1] + block.padding[1]) // block.dilation[1]
    c_local = c - (o // (c_out // block.groups)) * c_in_group
    return ((o * c_in_group + c_local) * kh + ky) * kw + kx


@pytest.mark.parametrize("edges", [True, False], ids=["per-edge", "per-parameter"])
@pytest.mark.parametrize("absolute", [False, True], ids=["signed", "absolute"])
@pytest.mark.parametrize("name", ["dense", "sparse", "edges", "conv"])
def test_parameter_sums_equal_summed_messages_of_the_edges_sharing_each_weight(name, absolute, edges):
    graph, x, target = network(name)
    for rule in ("epsilon", "gamma", "zbox"):
        found = graphlrp.aggregate(graph, x, target, rule=RULES[rule](), batch_size=5, absolute=absolute,
                                   edges=edges, progress=False).parameter_relevance()
        explanation = graphlrp.explain(graph, x, target=target, rule=RULES[rule]())
        messages, biases = explanation.edge_relevance(), explanation.bias_relevance()
        messages = (messages.abs() if absolute else messages).sum(0)
        biases = (biases.abs() if absolute else biases).sum(0)
        start = 0
        for position, block in enumerate(graph.blocks):
            level = graph.levels[block.dst]
            stop = start + block.num_edges
            if isinstance(level.layer_type, type) and issubclass(level.layer_type, (nn.Linear, nn.Conv2d)):
                shape = found[f"{level.name}.weight"].shape
                expected = torch.zeros(shape, dtype=torch.float64).reshape(-1)
                expected.index_add_(0, torch.from_numpy(_edges_per_parameter(graph, position, tuple(shape))),
                                    messages[start:stop])
                assert_close(found[f"{level.name}.weight"], expected.reshape(shape))
                node_bias = biases[level.offset : level.offset + level.size]
                assert_close(found[f"{level.name}.bias"], node_bias.reshape(level.shape[0], -1).sum(1))
            start = stop


def _epsilon_by_autograd(model: nn.Sequential, x: torch.Tensor, target: torch.Tensor, epsilon: float):
    """LRP-ε through a Sequential of Linear/Conv2d/ReLU/Flatten with plain autograd, and per layer
    ``W ⊙ ∂/∂W (z · s.detach()).sum()`` (and the same for the bias): the reference of a weight's
    relevance summed over the batch."""
    inputs, a = [], x
    for layer in model:
        inputs.append(a)
        a = layer(a).detach()
    relevance = torch.zeros_like(a).scatter_(1, target[:, None], a.gather(1, target[:, None]))
    found = {}
    for index in reversed(range(len(model))):
        layer, a = model[index], inputs[index].clone().requires_grad_(True)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            relevance = relevance.reshape(a.shape)
            continue
        z = layer(a)
        s = relevance / (z + epsilon * torch.where(z >= 0, 1.0, -1.0))
        weight, bias, by_input = torch.autograd.grad((z * s.detach()).sum(), (layer.weight, layer.bias, a))
        found[f"{index}.weight"] = layer.weight.detach() * weight
        found[f"{index}.bias"] = layer.bias.detach() * bias
        relevance = (a * by_input).detach()
    return found


@pytest.mark.parametrize("edges", [True, False], ids=["per-edge", "per-parameter"])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_epsilon_parameter_sums_equal_the_gradient_trick(name, edges):
    torch.manual_seed(3)
    if name == "mlp":
        model, x = make_mlp([6, 9, 7, 4], seed=3), torch.randn(13, 6, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 3 * 3, 4)).double().eval()
        x = torch.randn(13, 2, 8, 8, dtype=torch.float64)
    target = torch.arange(len(x)) % 4
    graph = graphlrp.lower(model, x)
    found = graphlrp.aggregate(graph, x, target, rule=rules.Epsilon(0.0625), batch_size=4, edges=edges,
                               progress=False)
    expected = _epsilon_by_autograd(model, x, target, 0.0625)  # a power of two: the same in float32
    parameters = found.parameter_relevance()
    assert set(parameters) == set(expected) == {name for name, _ in model.named_parameters()}
    for key, values in expected.items():
        assert_close(parameters[key], values)


@pytest.mark.parametrize("name", ["conv", "pooled", "residual"])
def test_sums_per_parameter_keep_the_node_sums_and_a_convolution_sum_per_kernel_weight(name):
    graph, x, target = network(name)
    for rule in ("epsilon", "zplus", "zbox"):
        per_edge = graphlrp.aggregate(graph, x, target, rule=RULES[rule](), batch_size=3, progress=False)
        per_parameter = graphlrp.aggregate(graph, x, target, rule=RULES[rule](), batch_size=3, edges=False,
                                           progress=False)
        assert_close(per_parameter.node_relevance, per_edge.node_relevance)
        assert_close(per_parameter.bias_relevance, per_edge.bias_relevance)
        found, expected = per_parameter.parameter_relevance(), per_edge.parameter_relevance()
        assert set(found) == set(expected)
        for key in expected:
            assert_close(found[key], expected[key])
    convolutions = [k for k, block in enumerate(graph.blocks) if block.kind == "conv"]
    assert all(per_parameter._sums.weighted[k][0].numel() == graph.blocks[k].weight.numel() for k in convolutions)
    with pytest.raises(InputError, match="edges=False"):
        per_parameter.edge_relevance()


def test_sums_per_parameter_of_a_graph_without_convolutions_keep_every_edge():
    graph, x, target = network("dense")
    found = graphlrp.aggregate(graph, x, target, rule=rules.ZPlus(), edges=False, progress=False)
    assert_close(found.edge_relevance(), per_sample_sums(graph, x, target, rule=rules.ZPlus())[1])


def test_parameter_names_of_pruned_layers_folded_batch_norms_and_edge_list_graphs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    randomize_batch_norms(model)
    prune.l1_unstructured(model[4], "weight", amount=0.5)
    model.eval()
    x = torch.randn(6, 1, 6, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    found = graphlrp.aggregate(graph, x, 1, progress=False).parameter_relevance()
    assert set(found) == {"0.weight", "0.bias", "4.weight", "4.bias", "6.weight", "6.bias"}
    assert found["4.weight"].shape == model[4].weight.shape
    assert bool((found["4.weight"][model[4].weight_mask == 0] == 0).all())
    unfolded = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 2)).double()
    randomize_batch_norms(unfolded)
    unfolded.eval()
    graph = graphlrp.lower(unfolded, x)
    found = graphlrp.aggregate(graph, x, 1, progress=False)
    names = found.parameter_relevance()
    assert {k: v.shape for k, v in names.items()} == {k: v.shape for k, v in unfolded.named_parameters()}
    norm = next(k for k, b in enumerate(graph.blocks) if graph.levels[b.dst].name == "2")
    start = sum(b.num_edges for b in graph.blocks[:norm])
    per_node = found.edge_relevance()[start : start + graph.blocks[norm].num_edges]
    assert_close(names["2.weight"], per_node.reshape(3, -1).sum(1))
    dag = graphlrp.graph_from_edges([0, 1, 0, 2], [2, 2, 3, 3], [0.5, -1.0, 2.0, 1.5], bias=[0, 0, 0.1, -0.2],
                                    inputs=[0, 1], outputs=[3], dtype=torch.float64)
    per_block = graphlrp.aggregate(dag, torch.randn(5, 2, dtype=torch.float64), 0, progress=False)
    values = per_block.parameter_relevance()
    assert all(key.startswith(("blocks.", "levels.")) for key in values)
    edges = torch.cat([values[f"blocks.{k}.weight"] for k in range(len(dag.blocks))])
    assert_close(edges, per_block.edge_relevance())


# -- by class, batch size, combining and files -----------------------------------------------------
def test_by_class_equals_aggregating_each_class_separately():
    graph, x, target = network("pooled")
    rule = rules.ZPlus()
    found = graphlrp.aggregate(graph, x, target, rule=rule, by_class=True, batch_size=3, progress=False)
    assert found.node_relevance.shape == (3, graph.num_nodes)
    for k in range(3):
        alone = graphlrp.aggregate(graph, x[target == k], k, rule=rule, batch_size=3, progress=False)
        assert int(found.class_counts[k]) == alone.count
        assert_close(found.node_relevance[k], alone.node_relevance)
        assert_close(found.edge_relevance()[k], alone.edge_relevance())
        for name, values in alone.parameter_relevance().items():
            assert_close(found.parameter_relevance()[name][k], values)


def test_batch_size_changes_nothing_beyond_float64_rounding():
    graph, x, target = network("conv")
    runs = [graphlrp.aggregate(graph, x, target, rule=rules.Gamma(0.25), batch_size=size, progress=False)
            for size in (1, 3, 100)]
    for run in runs[1:]:
        assert_close(run.edge_relevance(), runs[0].edge_relevance(), 1e-14)
        assert_close(run.node_relevance, runs[0].node_relevance, 1e-14)


def test_data_loader_labels_predicted_and_update_by_hand():
    graph, x, target = network("dense")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, target), batch_size=4)
    by_label = graphlrp.aggregate(graph, loader, "label", progress=False)
    _, edges = per_sample_sums(graph, x, target)
    assert_close(by_label.edge_relevance(), edges)
    predicted = graph(x).argmax(1)
    assert_close(graphlrp.aggregate(graph, x, "predicted", progress=False).edge_relevance(),
                 per_sample_sums(graph, x, predicted)[1])
    by_hand = graphlrp.Aggregate(graph).update(x[:5], target[:5]).update(x[5:], target[5:])
    assert by_hand.count == len(x)
    assert_close(by_hand.edge_relevance(), edges)


def test_aggregates_add_save_and_load(tmp_path):
    graph, x, target = network("sparse")
    first = graphlrp.aggregate(graph, x[:6], target[:6], rule=rules.ZPlus(), progress=False)
    second = graphlrp.aggregate(graph, x[6:], target[6:], rule=rules.ZPlus(), progress=False)
    whole = graphlrp.aggregate(graph, x, target, rule=rules.ZPlus(), progress=False)
    total = first + second
    assert total.count == len(x)
    assert_close(total.edge_relevance(), whole.edge_relevance())
    path = tmp_path / "sums.pt"
    total.save(path)
    loaded = graphlrp.Aggregate.load(path, graph, rule=rules.ZPlus())
    assert loaded.count == total.count
    assert torch.equal(loaded.edge_relevance(), total.edge_relevance())
    assert torch.equal(loaded.node_relevance, total.node_relevance)
    with pytest.raises(InputError, match="rules"):
        graphlrp.Aggregate.load(path, graph, rule=rules.Epsilon())
    with pytest.raises(InputError, match="another graph"):
        graphlrp.Aggregate.load(path, network("sparse", seed=1)[0], rule=rules.ZPlus())
    with pytest.raises(InputError, match="settings"):
        first + graphlrp.Aggregate(graph, rule=rules.ZPlus(), absolute=True)
    (tmp_path / "junk.pt").write_bytes(b"not a file of sums")
    with pytest.raises(FileFormatError, match="not a graphlrp aggregate"):
        graphlrp.Aggregate.load(tmp_path / "junk.pt", graph)


@pytest.mark.parametrize("call, error, message", [
    (lambda g, x: graphlrp.aggregate(g, x, 0.5, progress=False), ArgumentTypeError, "target must be an int"),
    (lambda g, x: graphlrp.aggregate(g, x, "best", progress=False), InputError, "target must be a class index"),
    (lambda g, x: graphlrp.aggregate(g, x, "label", progress=False), InputError, "needs data that yields"),
    (lambda g, x: graphlrp.aggregate(g, x, [0, 1], progress=False), InputError, "target has 2 entries"),
    (lambda g, x: graphlrp.aggregate(g, x, 0, batch_size=0, progress=False), InputError, "batch_size must be"),
    (lambda g, x: graphlrp.aggregate(g, x[:0], 0, progress=False), InputError, "no samples"),
    (lambda g, x: graphlrp.aggregate(g, 3, 0, progress=False), ArgumentTypeError, "data must be"),
    (lambda g, x: graphlrp.aggregate(g, [(1, 2)], 0, progress=False), ArgumentTypeError, "data must yield"),
    (lambda g, x: graphlrp.aggregate(g, x, 0, checkpoint=3, progress=False), ArgumentTypeError, "checkpoint"),
    (lambda g, x: graphlrp.aggregate(g, x, 0, by_class=1, progress=False), ArgumentTypeError, "by_class"),
    (lambda g, x: graphlrp.aggregate(g, x, 0, rule=composites.EpsilonPlus(), progress=False), ArgumentTypeError,
     "rule= takes one rule"),
    (lambda g, x: graphlrp.aggregate(g, x, 0, progress=False).edge_relevance(max_bytes=0), GraphTooLargeError,
     "summed relevance"),
])
def test_arguments_are_refused_with_graphlrp_errors(call, error, message):
    graph, x, _ = network("dense")
    with pytest.raises(error, match=message):
        call(graph, x)


# -- checkpoints -----------------------------------------------------------------------------------
#: the run a subprocess does, and this test again in its own process: 84 samples in batches of 3, chunks of 6
_SETUP = textwrap.dedent("""
    import time, torch, torch.nn as nn
    import graphlrp
    from graphlrp import rules

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 3))
    x = torch.randn(84, 1, 8, 8, dtype=torch.float64)
    target = torch.arange(84) % 3
    graph = graphlrp.lower(model.double().eval(), x)

    def run(path, pause):
        def slow():
            for start in range(0, len(x), 3):
                time.sleep(pause)
                yield x[start : start + 3], target[start : start + 3]

        return graphlrp.aggregate(graph, slow(), "label", rule=rules.ZPlus(), checkpoint=path, chunk_size=6,
                                  checkpoint_every=1, progress=False)
""")
_RUN = _SETUP + textwrap.dedent("""
    found = run({path!r}, {pause})
    torch.save({{"count": found.count, "edges": found.edge_relevance(), "nodes": found.node_relevance}}, {out!r})
""")


def _run(path: Path, out: Path, pause: float) -> subprocess.Popen:
    script = _RUN.format(pause=pause, path=str(path), out=str(out))
    return subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)


def test_a_run_killed_mid_way_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(tmp_path):
    checkpoint, out = tmp_path / "run.pt", tmp_path / "out.pt"
    process = _run(checkpoint, out, pause=0.2)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.3)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoint.exists() and not out.exists()
    saved = int(torch.load(checkpoint, weights_only=True)["counts"].sum())
    assert 0 < saved < 84 and saved % 6 == 0
    assert _run(checkpoint, out, pause=0.0).wait() == 0
    resumed = torch.load(out)
    here: dict = {}
    exec(_SETUP, here)
    uninterrupted = here["run"](tmp_path / "again.pt", 0.0)
    plain = graphlrp.aggregate(here["graph"], here["x"], here["target"], rule=rules.ZPlus(), batch_size=3,
                               progress=False)
    assert resumed["count"] == uninterrupted.count == 84
    assert torch.equal(resumed["edges"], uninterrupted.edge_relevance())
    assert torch.equal(resumed["nodes"], uninterrupted.node_relevance)
    assert_close(resumed["edges"], plain.edge_relevance(), 1e-14)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

# -- command line ----------------------------------------------------------------------------------
def test_aggregate_command_with_parameters_only_writes_no_edges(tmp_path):
    import argparse

    import graphlrp.cli
    from graphlrp.aggregation.cli import add_parser

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    torch.save(model, tmp_path / "model.pt")
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(), graphlrp.cli)
    (tmp_path / "factory.py").write_text("import torch\ndef make():\n    return torch.load(%r, weights_only=False)\n"
                                         % str(tmp_path / "model.pt"))
    args = parser.parse_args(["aggregate", f"{tmp_path / 'factory.py'}:make", str(tmp_path / "x.pt"), "--target", "1",
                              "--out", str(tmp_path / "sums.pt"), "-q", "--parameters-only"])
    args.run(args)
    written = torch.load(tmp_path / "sums.pt")
    expected = graphlrp.aggregate(graphlrp.lower(model, x), x, 1, progress=False)
    assert "edges" not in written
    assert_close(written["parameters"]["0.weight"], expected.parameter_relevance()["0.weight"])
    with pytest.raises(InputError, match="--parameters-only"):
        args = parser.parse_args(["aggregate", f"{tmp_path / 'factory.py'}:make", str(tmp_path / "x.pt"),
                                  "--target", "1", "--out", str(tmp_path / "sums.pt"), "-q", "--parameters-only",
                                  "--edges", str(tmp_path / "top.json")])
        args.run(args)


def test_aggregate_command_writes_parameter_node_and_edge_sums(tmp_path):
    import argparse

    import graphlrp.cli
    from graphlrp.aggregation.cli import add_parser

    (tmp_path / "factory.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double().eval()
    """))
    torch.manual_seed(1)
    x = torch.randn(9, 1, 6, 6, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(), graphlrp.cli)
    for out in ("sums.pt", "sums.npz"):
        args = parser.parse_args(["aggregate", f"{tmp_path / 'factory.py'}:make", str(tmp_path / "x.pt"), "--target", "1",
                                  "--rule", "zplus", "--batch-size", "4", "--out", str(tmp_path / out), "-q",
                                  "--edges", str(tmp_path / "top.graphml"), "--top-k", "5"])
        args.run(args)
    model = __import__("runpy").run_path(str(tmp_path / "factory.py"))["make"]()
    graph = graphlrp.lower(model, x)
    expected = graphlrp.aggregate(graph, x, 1, rule=rules.ZPlus(), progress=False)
    written = torch.load(tmp_path / "sums.pt")
    assert written["count"] == 9
    assert_close(written["edges"], expected.edge_relevance())
    assert set(written["parameters"]) == {name for name, _ in model.named_parameters()}
    arrays = np.load(tmp_path / "sums.npz")
    assert_close(torch.from_numpy(arrays["parameter:0.weight"]), expected.parameter_relevance()["0.weight"])
    import networkx as nx

    top = nx.read_graphml(tmp_path / "top.graphml")
    assert top.number_of_edges() == 5
    assert max(abs(r) for *_, r in top.edges(data="relevance")) == pytest.approx(
        float(expected.edge_relevance().abs().max()))
