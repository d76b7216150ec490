"""Prune an MLP on scikit-learn's digits by magnitude and watch graphlrp's graph and cost shrink.

Trains a 64→512→512→10 MLP on the 8×8 digits (seconds), then prunes it gradually to 50%, 90%
and 99% of its weights with ``torch.nn.utils.prune.global_unstructured`` (smallest ``|w|`` over
all three layers). Every pruning step removes at most 70% of the remaining weights and is
fine-tuned briefly, which keeps the accuracy above 90% even at 99%. For each amount (0% too) it
lowers the model to a graph and prints one row:

- test accuracy, edges (the nonzero weights), ``graph.nbytes`` and the block kind of each
  layer that ``graphlrp.lower`` chose (sparse CSR at or below 20% density, else dense), next to
  the memory of the same graph forced dense (``block_kind='dense'``);
- the median time of ``graphlrp.explain`` on a batch of 64 digits with ε and z⁺, on the chosen
  blocks and on forced dense blocks;
- the largest difference between graphlrp's input relevance and ε-LRP computed here with dense
  matrices from the masked weights ``weight_orig * weight_mask`` (:func:`reference_epsilon_lrp`),
  in float64, relative to the largest relevance: rounding error, below 1e-15.

At this size an explanation takes a few milliseconds on any kind of block (on two CPU cores):
fixed per-level work costs as much as the matrix products, and torch's sparse products are no
faster than dense ones here. What pruning shrinks is the graph: its edges and its memory.

Run: ``python examples/pruning_sweep.py [--quick] [--amounts 0 0.5 0.9 0.99]``.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from sklearn.datasets import load_digits
from torch import Tensor

import graphlrp
from graphlrp import rules
from graphlrp.rules import Rule

AMOUNTS = (0.0, 0.5, 0.9, 0.99)
#: ε of the ε rule, in the timings and in the comparison with the reference
EPSILON = 1e-6
#: the rules timed, by the name printed in the table header
TIMED_RULES: dict[str, Rule] = {"ε": rules.Epsilon(EPSILON), "z⁺": rules.ZPlus()}
#: every pruning step keeps at least this fraction of the weights that remain
KEEP_PER_STEP = 0.3


@dataclass(frozen=True)
class Settings:
    """Sizes and lengths of the sweep: epochs of training, of fine-tuning per pruning step."""

    hidden: int = 512
    epochs: int = 10
    finetune_epochs: int = 5
    explain_batch: int = 64
    repeats: int = 7
    seed: int = 0


#: a smoke test: a smaller network, trained and timed less
QUICK = Settings(hidden=128, epochs=5, finetune_epochs=2, repeats=3)


@dataclass(frozen=True)
class SweepRow:
    """What one pruning amount gives.

    Attributes
    ----------
    amount : float
        Fraction of the weights pruned.
    accuracy : float
        Test accuracy after fine-tuning.
    edges : int
        Edges of the graph (nonzero weights).
    nbytes, dense_nbytes : int
        ``graph.nbytes`` with the block kinds ``lower`` chose, and with every block dense.
    kinds : tuple of str
        Block kind of each layer, input side first.
    times, dense_times : dict of str to float
        Median seconds of ``explain`` per rule name, on the chosen blocks and on dense blocks.
    max_difference : float
        ``max |R_graphlrp - R_reference| / max |R_reference|`` of ε-LRP's input relevance, float64.
    """

    amount: float
    accuracy: float
    edges: int
    nbytes: int
    dense_nbytes: int
    kinds: tuple[str, ...]
    times: dict[str, float]
    dense_times: dict[str, float]
    max_difference: float


def load_data() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as ``(n, 64)`` float32 in [0, 1], split 80/20 with a fixed permutation."""
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def make_mlp(hidden: int) -> nn.Sequential:
    """``64 → hidden → hidden → 10`` with ReLUs."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, x: Tensor, y: Tensor, epochs: int, lr: float = 1e-3, batch: int = 64) -> None:
    """Adam on the cross-entropy over shuffled mini-batches; leaves the model in eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(x)).split(batch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        model(x[:1])  # a pruned layer's ``weight`` is recomputed without autograd history: deep copies work


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of samples whose largest logit is the label."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The model's dense layers, input side first."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def prune_to(model: nn.Module, amount: float, already: float = 0.0) -> None:
    """Prune ``model`` in place until ``amount`` of all its weights are pruned, the smallest ``|w|`` first.

    ``already`` is the fraction pruned so far; this prunes the share of the remaining weights
    that brings the total to ``amount`` (``torch.nn.utils.prune`` applies an amount to the
    weights not pruned yet).
    """
    layers = linear_layers(model)
    parameters = [(layer, "weight") for layer in layers]
    scores = {(layer, "weight"): masked_weight(layer).detach().abs() for layer in layers}
    step = 1.0 - (1.0 - amount) / (1.0 - already)
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=step)


def pruning_steps(already: float, amount: float, keep: float = KEEP_PER_STEP) -> list[float]:
    """Fractions pruned after each step from ``already`` to ``amount``, the last one ``amount``.

    The fewest steps that each keep at least ``keep`` of the remaining weights, all keeping the
    same share.
    """
    ratio = (1.0 - amount) / (1.0 - already)
    steps = max(1, math.ceil(math.log(ratio) / math.log(keep) - 1e-9))
    return [1.0 - (1.0 - already) * ratio ** (k / steps) for k in range(1, steps)] + [amount]


def masked_weight(layer: nn.Linear) -> Tensor:
    """The weight a layer computes with: ``weight_orig * weight_mask`` when pruned, else ``weight``."""
    if hasattr(layer, "weight_mask"):
        return layer.weight_orig * layer.weight_mask
    return layer.weight


def reference_epsilon_lrp(model: nn.Module, x: Tensor, target: Tensor, epsilon: float = EPSILON) -> Tensor:
    """ε-LRP of an MLP (``Linear``, ``ReLU``, ..., ``Linear``) with dense matrices, as in the seed notebooks.

    Forward: ``z_l = a_{l-1} W_lᵀ + b_l``, ``a_l = relu(z_l)`` (the last ``z`` is the output).
    Relevance starts as the target's logit and goes back through every layer as
    ``R_{l-1} = a_{l-1} * ((R_l / (z_l + ε·sign(z_l))) @ W_l)`` with ``sign(0) = +1``.

    Parameters
    ----------
    model : nn.Module
        An MLP whose dense layers may be pruned with ``torch.nn.utils.prune``.
    x : Tensor
        ``(B, in_features)``.
    target : Tensor
        ``(B,)`` class indices.
    epsilon : float
        The stabilizer ε.

    Returns
    -------
    Tensor
        ``(B, in_features)`` input relevance.
    """
    layers = linear_layers(model)
    inputs, sums = [], []
    a = x
    with torch.no_grad():
        for position, layer in enumerate(layers):
            z = a @ masked_weight(layer).T + layer.bias
            inputs.append(a)
            sums.append(z)
            a = z.clamp(min=0) if position < len(layers) - 1 else z
        rows = torch.arange(len(x))
        relevance = torch.zeros_like(sums[-1])
        relevance[rows, target] = sums[-1][rows, target]
        for layer, a_in, z in zip(reversed(layers), reversed(inputs), reversed(sums)):
            stabilized = z + epsilon * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
            relevance = a_in * ((relevance / stabilized) @ masked_weight(layer))
    return relevance


def max_relative_difference(model: nn.Module, x: Tensor) -> float:
    """``max |R_graphlrp - R_reference| / max |R_reference|`` of ε-LRP for the predicted classes, in float64.

    The scale is at least the smallest normal float64, so all-zero relevance gives 0, not NaN.
    """
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    with torch.no_grad():
        target = model64(x64).argmax(1)
    graph = graphlrp.lower(model64, x64)
    relevance = graphlrp.explain(graph, x64, target=target, rule=rules.Epsilon(EPSILON)).input_relevance
    expected = reference_epsilon_lrp(model64, x64, target)
    scale = expected.abs().max().clamp(min=torch.finfo(torch.float64).tiny)
    return float((relevance - expected).abs().max() / scale)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def explain_times(graph: graphlrp.Graph, x: Tensor, target: Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of ``graphlrp.explain`` with each rule of :data:`TIMED_RULES`."""
    return {name: median_seconds(lambda: graphlrp.explain(graph, x, target=target, rule=rule), repeats)
            for name, rule in TIMED_RULES.items()}


def measure(model: nn.Module, amount: float, x_test: Tensor, y_test: Tensor, settings: Settings) -> SweepRow:
    """Lower the (pruned, fine-tuned) model both ways and measure one row of the table."""
    batch = x_test[: settings.explain_batch]
    with torch.no_grad():
        target = model(batch).argmax(1)
    graph = graphlrp.lower(model, batch)
    dense = graphlrp.lower(model, batch, block_kind="dense")
    return SweepRow(
        amount=amount,
        accuracy=accuracy(model, x_test, y_test),
        edges=graph.num_edges,
        nbytes=graph.nbytes,
        dense_nbytes=dense.nbytes,
        kinds=tuple(block.kind for block in graph.blocks),
        times=explain_times(graph, batch, target, settings.repeats),
        dense_times=explain_times(dense, batch, target, settings.repeats),
        max_difference=max_relative_difference(model, batch),
    )


def sweep(amounts: Sequence[float] = AMOUNTS, settings: Settings = Settings()) -> list[SweepRow]:
    """Train one MLP, then prune it gradually to each amount (ascending), fine-tuning every step.

    Raises
    ------
    ValueError
        Unless the amounts are in ``[0, 1)`` and ascending.
    """
    if any(not 0 <= a < 1 for a in amounts) or list(amounts) != sorted(amounts):
        raise ValueError(f"amounts must be ascending fractions in [0, 1), got {list(amounts)}")
    torch.manual_seed(settings.seed)
    x_train, y_train, x_test, y_test = load_data()
    model = make_mlp(settings.hidden)
    train(model, x_train, y_train, settings.epochs)
    rows, already = [], 0.0
    for amount in amounts:
        if amount > already:
            for step in pruning_steps(already, amount):
                prune_to(model, step, already)
                train(model, x_train, y_train, settings.finetune_epochs)
                already = step
        rows.append(measure(model, amount, x_test, y_test, settings))
    return rows


def format_table(rows: Sequence[SweepRow]) -> str:
    """The rows as an aligned text table (times in milliseconds)."""
    names = list(TIMED_RULES)
    header = ["pruned", "accuracy", "edges", "memory", "dense memory", "blocks",
              *(f"{name} ms" for name in names), *(f"{name} ms dense" for name in names), "max rel. diff"]
    table = [header]
    for row in rows:
        table.append([
            f"{row.amount:.0%}", f"{row.accuracy:.3f}", f"{row.edges:,}", _kib(row.nbytes), _kib(row.dense_nbytes),
            "/".join(row.kinds), *(f"{1e3 * row.times[n]:.2f}" for n in names),
            *(f"{1e3 * row.dense_times[n]:.2f}" for n in names), f"{row.max_difference:.1e}",
        ])
    widths = [max(len(line[c]) for line in table) for c in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in table)


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.1f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amounts", type=float, nargs="+", default=list(AMOUNTS), help="fractions to prune")
    parser.add_argument("--quick", action="store_true", help="a 64→128→128→10 MLP, trained and timed less")
    args = parser.parse_args()
    settings = QUICK if args.quick else Settings()
    print(f"MLP 64→{settings.hidden}→{settings.hidden}→10 on the digits; explain times: median of "
          f"{settings.repeats}, batch {settings.explain_batch}, {torch.get_num_threads()} threads\n")
    rows = sweep(args.amounts, settings)
    print(format_table(rows))
    print(f"\nlargest relative difference from the dense ε-LRP reference (float64): "
          f"{max(row.max_difference for row in rows):.3g}")


if __name__ == "__main__":
    main()
