"""Prune by explaining: accuracy against sparsity, without fine-tuning, for relevance and its rivals.

Trains three small models in seconds on data shipped with scikit-learn — an MLP and the CNN of
``digits_cnn.py`` on the 8×8 digits, and an MLP on the breast cancer data — and prunes each,
*without fine-tuning*, from 0 to 95% of its units in 5% steps, ranked by:

* ``yeom``: Σ over samples and positions of ``|R|``, each layer's scores divided by their sum
  (Yeom et al. 2021), and ``pxp``: Σ over samples of ``|Σ over positions R|``, raw (Hatefi et al.
  2024), both with ``EpsilonPlus`` (z⁺ on convolutions, ε = 1e-6 elsewhere) from 1, 5 or 20
  reference samples per class drawn from the training set;
* ``taylor``: first-order Taylor ``|a·∂y/∂a|`` (Molchanov et al. 2017), from the same samples;
* ``magnitude``: ``|w|``, or a unit's L1 norm, ranked over all layers, and ``magnitude/layer``:
  the same amount pruned in every layer;
* ``random``;
* ``pxp (5/class)/layer``: pxp with the same amount pruned in every layer, to tell the criterion
  from the scope.

Units are every weight (``weight``) and every hidden neuron (MLPs) or convolution channel (CNN)
(``unit``); relevance, Taylor and magnitude rank all layers together (``scope='global'``). Every
point is the mean test accuracy of several seeds (a seed trains the model and draws the reference
samples). The script prints a markdown table per model and granularity, the explanation time of
the pxp-pruned network (5 samples per class) at each sparsity, and draws every curve into
``out/prune_by_relevance.png``.

Run: ``python examples/prune_by_relevance.py [--seeds 3] [--quick] [--models NAME ...] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from sklearn.datasets import load_breast_cancer

import graphlrp
from graphlrp import composites, pruning

from digits_cnn import load_data as load_digits_images, make_cnn, train

RATES = [round(0.05 * k, 2) for k in range(20)]  # 0 … 0.95
REFERENCES = (1, 5, 20)
EXPLAIN_BATCH = 64


@dataclass(frozen=True)
class Task:
    """A model to train on a data set and prune at two granularities."""

    name: str
    unit: str  # the granularity of units: 'neuron' or 'channel'
    make: Callable[[], nn.Module]
    data: Callable[[int], tuple[torch.Tensor, ...]]  # seed -> x_train, y_train, x_test, y_test
    epochs: int


def digits_flat(seed: int) -> tuple[torch.Tensor, ...]:
    x_train, y_train, x_test, y_test = load_digits_images()
    return x_train.flatten(1), y_train, x_test.flatten(1), y_test


def breast_cancer(seed: int) -> tuple[torch.Tensor, ...]:
    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.7 * len(x))
    train_part, test_part = order[:split], order[split:]
    mean, std = x[train_part].mean(0), x[train_part].std(0)
    x = (x - mean) / std
    return x[train_part], y[train_part], x[test_part], y[test_part]


TASKS = (
    Task("digits MLP", "neuron", lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                                        nn.Linear(64, 10)), lambda seed: digits_flat(seed), 20),
    Task("digits CNN", "channel", make_cnn, lambda seed: load_digits_images(), 15),
    Task("breast cancer MLP", "neuron", lambda: nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32),
                                                               nn.ReLU(), nn.Linear(32, 2)), breast_cancer, 30),
)


def references(x: torch.Tensor, y: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` training samples of every class, drawn with ``seed``."""
    generator = torch.Generator().manual_seed(1000 + seed)
    chosen = [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=generator)[:per_class]]
              for c in y.unique()]
    rows = torch.cat(chosen)
    return x[rows], y[rows]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def criteria(model: nn.Module, x: torch.Tensor, y: torch.Tensor, granularity: str,
             seed: int, reference_counts: tuple[int, ...]) -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    """Every criterion's scores and the scope it prunes with, by label."""
    composite = composites.EpsilonPlus(epsilon=1e-6)
    found = {"magnitude": (pruning.magnitude_scores(model, granularity), "global"),
             "magnitude/layer": (pruning.magnitude_scores(model, granularity), "layer")}
    generator = torch.Generator().manual_seed(seed)
    found["random"] = ({name: torch.rand(values.shape, generator=generator, dtype=torch.float64)
                        for name, values in found["magnitude"][0].items()}, "global")
    for count in reference_counts:
        reference = [references(x, y, count, seed)]
        for criterion, normalize in (("yeom", True), ("pxp", False)):
            scores = pruning.relevance_scores(model, reference, target="label", composite=composite,
                                              granularity=granularity, criterion=criterion, normalize=normalize)
            found[f"{criterion} ({count}/class)"] = (scores, "global")
            if criterion == "pxp" and count == reference_counts[len(reference_counts) // 2]:
                found[f"pxp ({count}/class)/layer"] = (scores, "layer")
        found[f"taylor ({count}/class)"] = (pruning.taylor_scores(model, reference, target="label",
                                                                  granularity=granularity), "global")
    return found


def explain_time(model: nn.Module, x: torch.Tensor) -> float:
    """Median seconds of lowering nothing and explaining a batch of the test set (the graph lowered once)."""
    graph = graphlrp.lower(model, x[:1])
    batch = x[:EXPLAIN_BATCH]
    composite = composites.EpsilonPlus(epsilon=1e-6)
    graphlrp.explain(graph, batch, target=0, composite=composite)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        graphlrp.explain(graph, batch, target=0, composite=composite)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sweep(task: Task, granularity: str, seeds: int, rates: list[float],
          reference_counts: tuple[int, ...]) -> tuple[dict[str, list[float]], list[float]]:
    """Mean test accuracy per criterion and rate over the seeds, and the explanation time of the
    pxp-pruned network per rate (first seed)."""
    curves: dict[str, list[list[float]]] = {}
    times: list[float] = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        x_train, y_train, x_test, y_test = task.data(seed)
        model = task.make()
        train(model, x_train, y_train, epochs=task.epochs)
        for label, (scores, scope) in criteria(model, x_train, y_train, granularity, seed, reference_counts).items():
            row = []
            for rate in rates:
                pruned = pruning.prune(copy.deepcopy(model), scores, rate, granularity, scope)
                row.append(accuracy(pruned, x_test, y_test))
                if seed == 0 and label == f"pxp ({reference_counts[len(reference_counts) // 2]}/class)":
                    times.append(explain_time(pruned, x_test))
            curves.setdefault(label, []).append(row)
    return {label: [statistics.mean(column) for column in zip(*rows)] for label, rows in curves.items()}, times


def table(curves: dict[str, list[float]], rates: list[float]) -> str:
    shown = [r for r in rates if round(r * 100) % 10 == 0 or r >= 0.85]
    header = "| criterion | " + " | ".join(f"{round(r * 100)}%" for r in shown) + " | mean ≥ 50% |"
    lines = [header, "|" + "---|" * (len(shown) + 2)]
    high = [i for i, r in enumerate(rates) if r >= 0.5]
    for label, values in curves.items():
        cells = " | ".join(f"{values[rates.index(r)]:.3f}" for r in shown)
        lines.append(f"| {label} | {cells} | {statistics.mean(values[i] for i in high):.3f} |")
    return "\n".join(lines)


def draw(results: dict[str, dict[str, list[float]]], rates: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9), layout="constrained", squeeze=False)
    for ax, (title, curves) in zip(axes.flat, results.items()):
        for label, values in curves.items():
            style = "-" if label.startswith(("yeom", "pxp")) else "--" if label.startswith("taylor") else ":"
            ax.plot([100 * r for r in rates], values, style, label=label, linewidth=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pruned (%)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
    axes.flat[0].legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds averaged per point")
    parser.add_argument("--quick", action="store_true", help="one seed, the digits MLP, 4 rates, 5 samples per class")
    parser.add_argument("--models", nargs="+", choices=[task.name for task in TASKS], default=[task.name for task in TASKS],
                        help="the models to prune (default: all)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the PNG")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks = [task for task in TASKS if task.name in args.models]
    rates, counts, seeds = RATES, REFERENCES, args.seeds
    if args.quick:
        tasks, rates, counts, seeds = tasks[:1], [0.0, 0.5, 0.8, 0.95], (5,), 1
    results = {}
    for task in tasks:
        for granularity in (task.unit, "weight"):
            title = f"{task.name}, {'weights' if granularity == 'weight' else granularity + 's'}"
            curves, times = sweep(task, granularity, seeds, rates, counts)
            results[title] = curves
            print(f"### {title} (mean test accuracy of {seeds} seed(s), no fine-tuning)\n")
            print(table(curves, rates), "\n")
            print("explanation time of the pxp-pruned network, batch of 64 (ms): "
                  + ", ".join(f"{round(r * 100)}%: {1000 * t:.1f}" for r, t in zip(rates, times)), "\n", flush=True)
    path = args.out / "prune_by_relevance.png"
    draw(results, rates, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
