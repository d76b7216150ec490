"""The examples: their code against dense references, and the quick ones run end to end.

``custom_rule.py``, ``neat_explain.py --quick`` and ``pruning_sweep.py --quick`` run in a
subprocess (about 20 s together). ``pruned_digits.py`` and ``digits_cnn.py`` take about ten
seconds each and run only with ``GRAPHLRP_SLOW_EXAMPLES=1``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn as nn

import graphlrp

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: seconds an example may take before the test fails
TIMEOUT = 180
slow = pytest.mark.skipif(not os.environ.get("GRAPHLRP_SLOW_EXAMPLES"),
                          reason="a slow example: set GRAPHLRP_SLOW_EXAMPLES=1 to run it")


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as the module ``examples_<name>``."""
    module_name = f"examples_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>.py`` with ``args`` and return its standard output; fail on an error."""
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], capture_output=True, text=True,
                            timeout=TIMEOUT, env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, f"{name}.py failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def first_float(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in ``text``."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not found in:\n{text}"
    return float(match.group(1))


# -- custom_rule.py -------------------------------------------------------------------------------
@pytest.mark.parametrize("block_kind", ["dense", "sparse", "edges"])
def test_custom_rule_equals_its_dense_formula(block_kind):
    """One layer: ``R_in = a⁺ * ((R_out / (a⁺ @ |W|ᵀ + ε)) @ |W|)`` (the denominator is never negative)."""
    custom = load_example("custom_rule")
    torch.manual_seed(0)
    layer = nn.Linear(6, 4).double()
    model = nn.Sequential(layer).eval()
    x = torch.randn(5, 6, dtype=torch.float64)  # mixed signs: only a⁺ takes part
    target = torch.tensor([0, 1, 2, 3, 0])
    epsilon = 1e-9
    explanation = graphlrp.explain(graphlrp.lower(model, x, block_kind=block_kind), x, target=target,
                                   rule=custom.ZAbs(epsilon=epsilon))
    with torch.no_grad():
        logits = model(x)
    rows = torch.arange(len(x))
    relevance = torch.zeros_like(logits)
    relevance[rows, target] = logits[rows, target]
    positive, magnitude = x.clamp(min=0), layer.weight.detach().abs()
    expected = positive * ((relevance / (positive @ magnitude.T + epsilon)) @ magnitude)
    torch.testing.assert_close(explanation.input_relevance, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(explanation.input_relevance.sum(1), logits[rows, target], rtol=1e-6, atol=1e-9)


def test_custom_rule_runs():
    output = run_example("custom_rule")
    relevance_sum = re.search(r"sum of input relevance: tensor\(\[([^\]]+)\]", output.replace("\n", " "))
    logits = re.search(r"target logit:\s+tensor\(\[([^\]]+)\]", output.replace("\n", " "))
    assert relevance_sum and logits, output
    sums = [float(v) for v in relevance_sum.group(1).split(",")]
    targets = [float(v) for v in logits.group(1).split(",")]
    assert sums == pytest.approx(targets, abs=2e-4)  # printed to 4 decimals; ZAbs has no bias term: conserved


# -- pruning_sweep.py -----------------------------------------------------------------------------
def test_reference_epsilon_lrp_equals_graphlrp_on_a_pruned_mlp():
    sweep = load_example("pruning_sweep")
    torch.manual_seed(0)
    model = sweep.make_mlp(32).double().eval()
    sweep.prune_to(model, 0.8)
    x = torch.rand(7, 64, dtype=torch.float64)
    target = torch.arange(7)
    expected = sweep.reference_epsilon_lrp(model, x, target)
    for block_kind in ("auto", "dense", "edges"):
        graph = graphlrp.lower(model, x, block_kind=block_kind)
        assert graph.num_edges == sum(int((sweep.masked_weight(l) != 0).sum()) for l in sweep.linear_layers(model))
        explanation = graphlrp.explain(graph, x, target=target, rule=graphlrp.rules.Epsilon(sweep.EPSILON))
        torch.testing.assert_close(explanation.input_relevance, expected, rtol=1e-12, atol=1e-14)


def test_pruning_steps_reach_the_amount_keeping_a_share_each_step():
    sweep = load_example("pruning_sweep")
    for already, amount in [(0.0, 0.5), (0.5, 0.9), (0.9, 0.99), (0.0, 0.99)]:
        steps = sweep.pruning_steps(already, amount)
        assert steps[-1] == amount
        remaining = [1 - already] + [1 - s for s in steps]
        assert all(after / before >= sweep.KEEP_PER_STEP - 1e-12 for before, after in zip(remaining, remaining[1:]))
    assert len(sweep.pruning_steps(0.9, 0.99)) == 2


def test_pruning_sweep_shrinks_the_graph_and_matches_the_reference():
    sweep = load_example("pruning_sweep")
    settings = sweep.Settings(hidden=64, epochs=2, finetune_epochs=1, explain_batch=16, repeats=1)
    rows = sweep.sweep((0.0, 0.5, 0.95), settings)
    dense_edges = 64 * 64 + 64 * 64 + 64 * 10
    assert [row.edges for row in rows] == pytest.approx([dense_edges, 0.5 * dense_edges, 0.05 * dense_edges], abs=2)
    assert rows[0].kinds == ("dense",) * 3 and "sparse" in rows[2].kinds
    assert rows[2].nbytes < rows[0].nbytes == rows[0].dense_nbytes == rows[2].dense_nbytes
    assert all(row.max_difference < 1e-9 for row in rows)
    assert all(t > 0 for row in rows for t in [*row.times.values(), *row.dense_times.values()])


def test_pruning_sweep_runs():
    output = run_example("pruning_sweep", "--quick")
    assert first_float(r"dense ε-LRP reference \(float64\): (\S+)", output) < 1e-9
    edges = [int(m.replace(",", "")) for m in re.findall(r"^\s+\d+%\s+\S+\s+([\d,]+)", output, flags=re.M)]
    assert len(edges) == 4 and edges == sorted(edges, reverse=True) and edges[-1] < edges[0] / 50


# -- neat_explain.py ------------------------------------------------------------------------------
def test_neat_explain_runs(tmp_path):
    pytest.importorskip("neat")
    output = run_example("neat_explain", "--quick", "--out", str(tmp_path))
    assert first_float(r"max \|graph\(x\) - net.activate\(x\)\| over 150 flowers: (\S+)", output) < 1e-12
    for feature in ("sepal length", "sepal width", "petal length", "petal width"):
        assert re.search(rf"^{feature}\s+[+-]\d", output, flags=re.M), f"no relevance row for {feature}"
    headers = list(re.finditer(r"most relevant paths of flower \d+ \(predicted (\w+).*\n((?:  [+-].*\n)+)", output))
    assert headers, output
    for header in headers:
        for line in header.group(2).splitlines():
            route = line.split(maxsplit=1)[1].split(" -> ")
            assert route[0] in ("sepal length", "sepal width", "petal length", "petal width")
            assert route[-1] == header.group(1)  # every path ends at the explained class
    assert (tmp_path / "neat_circuit.png").stat().st_size > 1000


# -- the slow examples ----------------------------------------------------------------------------
@slow
def test_pruned_digits_runs(tmp_path):
    output = run_example("pruned_digits", "--out", str(tmp_path))
    assert first_float(r"fine-tuned: test accuracy (\S+)", output) > 0.9
    assert (tmp_path / "pruned_digits_relevance.png").exists()


@slow
def test_digits_cnn_runs(tmp_path):
    output = run_example("digits_cnn", "--out", str(tmp_path))
    assert first_float(r"CNN test accuracy: (\S+)", output) > 0.9
    assert (tmp_path / "digits_cnn_relevance.png").exists()


# -- prune_by_relevance.py ------------------------------------------------------------------------
def test_prune_by_relevance_draws_reference_samples_per_class_and_scores_every_criterion():
    sys.path.insert(0, str(EXAMPLES))
    try:
        example = load_example("prune_by_relevance")
    finally:
        sys.path.remove(str(EXAMPLES))
    x, y = torch.rand(40, 6), torch.arange(40) % 4
    chosen_x, chosen_y = example.references(x, y, 3, seed=0)
    assert torch.bincount(chosen_y).tolist() == [3, 3, 3, 3]
    assert all(any(torch.equal(row, other) for other in x[y == label]) for row, label in zip(chosen_x, chosen_y))
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    found = example.criteria(model, x, y, "neuron", seed=0, reference_counts=(1, 2))
    assert set(found) == {"magnitude", "magnitude/layer", "random", "yeom (1/class)", "pxp (1/class)",
                          "taylor (1/class)", "yeom (2/class)", "pxp (2/class)", "pxp (2/class)/layer", "taylor (2/class)"}
    for scores, scope in found.values():
        assert set(scores) == {"0"} and scores["0"].shape == (5,) and scope in ("global", "layer")


@pytest.mark.slow
def test_prune_by_relevance_runs(tmp_path):
    output = run_example("prune_by_relevance", "--quick", "--out", str(tmp_path))
    tables = re.findall(r"^\| criterion \|.*\n\|[-|]+\n((?:\|.*\n)+)", output, flags=re.M)
    assert len(tables) == 2, output
    for rows in tables:
        unpruned = {line.split("|")[2].strip() for line in rows.strip().splitlines()}
        assert len(unpruned) == 1 and float(unpruned.pop()) > 0.9  # at 0% every criterion has the trained model
    assert (tmp_path / "prune_by_relevance.png").stat().st_size > 1000
