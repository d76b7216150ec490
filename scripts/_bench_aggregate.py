"""Data-set aggregation cases of ``scripts/bench``: summing relevance over N samples against explaining them.

Each case explains N samples in batches of :data:`BATCH` (node relevance only) and aggregates the
same samples with :func:`graphlrp.aggregate` (edge and parameter sums read at the end); the ratio
is the aggregation's time over the explanations'. The per-sample column sums every sample's edge
messages (``Explanation.edge_relevance``, chunked), the method ``analysis.mean_edge_relevance``
used before it was built on :func:`graphlrp.aggregate`; timed once, it is slow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import graphlrp
from _bench_cases import lenet5, mlp, prune_linear_layers
from _bench_util import Target, Timing, markdown_table, ms, ratio, time_interleaved, time_once, verdict
from graphlrp.export import edge_relevance_chunks

BATCH = 64
AGGREGATION_TARGET = Target(1.5, unit="×")


@dataclass(frozen=True)
class AggregationCase:
    """A network, its input shape, an optional pruning amount, and whether edge sums are kept."""

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    prune_amount: float | None = None
    edges: bool = True


CASES = (
    AggregationCase("dense MLP", mlp, (1024,)),
    AggregationCase("MLP pruned 90%", mlp, (1024,), 0.9),
    AggregationCase("MLP pruned 99%", mlp, (1024,), 0.99),
    AggregationCase("LeNet-5", lenet5, (1, 28, 28)),
    AggregationCase("LeNet-5, per parameter", lenet5, (1, 28, 28), edges=False),
)


def _graph(case: AggregationCase, x: torch.Tensor) -> graphlrp.Graph:
    torch.manual_seed(0)
    model = case.build().eval()
    if case.prune_amount is not None:
        prune_linear_layers(model, case.prune_amount)
    return graphlrp.lower(model, x[:BATCH])


def _explain_all(graph: graphlrp.Graph, x: torch.Tensor, targets: torch.Tensor, rule) -> None:
    for start in range(0, len(x), BATCH):
        graphlrp.explain(graph, x[start : start + BATCH], target=targets[start : start + BATCH], rule=rule)


def _aggregate_all(graph: graphlrp.Graph, x: torch.Tensor, targets: torch.Tensor, rule, edges: bool = True) -> torch.Tensor:
    """Edge sums, or with ``edges=False`` every parameter's sums, flattened into one vector."""
    sums = graphlrp.aggregate(graph, x, targets, rule=rule, batch_size=BATCH, progress=False, edges=edges)
    parameters = sums.parameter_relevance()
    if not edges:
        return torch.cat([values.reshape(-1) for values in parameters.values()])
    return sums.edge_relevance()


def _per_sample_all(graph: graphlrp.Graph, x: torch.Tensor, targets: torch.Tensor, rule) -> torch.Tensor:
    total = torch.zeros(graph.num_edges, dtype=torch.float64)
    for start in range(0, len(x), BATCH):
        explanation = graphlrp.explain(graph, x[start : start + BATCH], target=targets[start : start + BATCH],
                                       rule=rule)
        for messages in edge_relevance_chunks(explanation):
            total += messages.sum(0, dtype=torch.float64)
    return total


def measure_aggregation(case: AggregationCase, samples: int, timing: Timing, rule_name: str) -> dict:
    """Seconds to explain and to aggregate ``samples`` samples, the per-sample figure, and agreement."""
    rule = {"ε": graphlrp.rules.Epsilon, "z⁺": graphlrp.rules.ZPlus}[rule_name]()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(samples, *case.input_shape, generator=generator)
    graph = _graph(case, x)
    targets = graph(x).argmax(1)
    times = time_interleaved({"explain": lambda: _explain_all(graph, x, targets, rule),
                              "aggregate": lambda: _aggregate_all(graph, x, targets, rule, case.edges)}, timing)
    per_sample_s, reference = time_once(lambda: _per_sample_all(graph, x, targets, rule))
    if not case.edges:  # the per-edge sums' parameters (tested against per-sample messages) as the reference
        sums = graphlrp.aggregate(graph, x, targets, rule=rule, batch_size=BATCH, progress=False)
        reference = torch.cat([values.reshape(-1) for values in sums.parameter_relevance().values()])
    found = _aggregate_all(graph, x, targets, rule, case.edges)
    error = float((found - reference).abs().max() / reference.abs().max().clamp_min(1e-300))
    return {"case": case.name, "rule": rule_name, "samples": samples, "edges": graph.num_edges,
            "explain_s": times["explain"], "aggregate_s": times["aggregate"], "per_sample_s": per_sample_s,
            "error": error}


def run_aggregation(quick: bool, progress: Callable[[str], None]) -> list[dict]:
    """Every aggregation case, with ε (and z⁺ unless quick)."""
    samples = 256 if quick else 1024
    timing = Timing(warmup=1, repeats=3) if quick else Timing(warmup=1, repeats=5)
    rows = []
    for case in CASES:
        for rule_name in ("ε",) if quick else ("ε", "z⁺"):
            progress(f"aggregation: {case.name}, {rule_name}, {samples} samples")
            rows.append(measure_aggregation(case, samples, timing, rule_name))
    return rows


def aggregation_ratio(row: dict) -> float:
    """Aggregation time over explanation time."""
    return row["aggregate_s"] / row["explain_s"]


def aggregation_table(rows: list[dict]) -> str:
    """Aggregate against explain, with the per-sample figure beside it."""
    header = ("case", "rule", "samples", "edges", "explain ms", "aggregate ms", "aggregate / explain", "target",
              "met?", "per-sample messages ms", "per-sample / explain", "rel err vs per-sample")
    table = []
    for row in rows:
        share = aggregation_ratio(row)
        table.append((row["case"], row["rule"], str(row["samples"]), f"{row['edges']:,}", ms(row["explain_s"]),
                      ms(row["aggregate_s"]), ratio(share), str(AGGREGATION_TARGET),
                      verdict(AGGREGATION_TARGET, share), ms(row["per_sample_s"]),
                      ratio(row["per_sample_s"] / row["explain_s"]), f"{row['error']:.1e}"))
    return markdown_table(header, table)


def missed_aggregation(rows: list[dict]) -> list[str]:
    """One line per aggregation case above its target."""
    return [f"aggregation {row['case']}, {row['rule']}: {aggregation_ratio(row):.3g}× explain "
            f"(target {AGGREGATION_TARGET})" for row in rows if not AGGREGATION_TARGET.met(aggregation_ratio(row))]


AGGREGATION_NOTES = f"""\
- Aggregation: N samples N(0, 1), float32, target = predicted class, batches of {BATCH}. explain = `graphlrp.explain`
  per batch (node relevance, no edge relevance); aggregate = `graphlrp.aggregate` over the same samples, then
  `edge_relevance()` and `parameter_relevance()` (a case "per parameter": `edges=False`, parameters only, its
  error against the per-edge aggregate's parameter sums); per-sample messages = every sample's `edge_relevance` summed
  (the method `analysis.mean_edge_relevance` used before it was built on `aggregate`), timed once.
  Pruned MLPs: `l1_unstructured` with the prune hooks kept, lowered with `block_kind='auto'` (CSR)."""
