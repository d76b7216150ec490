"""Relevance per parameter of the digits CNN, per class, summed over the test set.

Trains the CNN of ``digits_cnn.py`` on scikit-learn's 8×8 digits, sums with
:func:`graphlrp.aggregate` the relevance of every weight over the test digits, per true class
(``by_class=True``, rule ``EpsilonPlus``: z⁺ on convolutions, ε on the dense layer), and draws:

* per convolution, its kernels coloured by their summed relevance for one class
  (``out/aggregate_<layer>.png``: a row per output filter, a column per input channel);
* per convolution, a bar chart of the filters whose weights carry the most relevance, per class
  (``out/aggregate_filters.png``).

The sums equal the messages of every edge that shares each weight, summed over the samples; the
whole test set costs about as much as explaining it once.

Run: ``python examples/aggregate_digits_cnn.py [--out DIR] [--digit D]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import graphlrp
from graphlrp import composites

from digits_cnn import load_data, make_cnn, train

CONVOLUTIONS = ("0", "3")  # module paths of the CNN's two Conv2d layers
TOP_FILTERS = 5


def draw_kernels(weights: torch.Tensor, title: str, path: Path) -> None:
    """``(filters, channels, k, k)`` relevance on one symmetric colour scale: a row per filter and a
    column per input channel (for one input channel, the filters in rows of eight)."""
    if weights.shape[1] == 1:
        cells = [[weights[f, 0] for f in range(row, min(row + 8, len(weights)))] for row in range(0, len(weights), 8)]
    else:
        cells = [[weights[f, c] for c in range(min(weights.shape[1], 16))] for f in range(len(weights))]
    rows, columns = len(cells), max(len(row) for row in cells)
    bound = float(weights.abs().max()) or 1.0
    fig, axes = plt.subplots(rows, columns, figsize=(0.5 * columns + 1, 0.5 * rows + 0.8), squeeze=False,
                             layout="constrained")
    for r in range(rows):
        for c in range(columns):
            if c < len(cells[r]):
                axes[r, c].imshow(cells[r][c], cmap="bwr", vmin=-bound, vmax=bound)
            axes[r, c].set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_filters(parameters: dict[str, torch.Tensor], path: Path) -> None:
    """Per convolution and class, the filters with the largest summed weight relevance."""
    classes = parameters[f"{CONVOLUTIONS[0]}.weight"].shape[0]
    fig, axes = plt.subplots(len(CONVOLUTIONS), classes, figsize=(1.6 * classes, 2.2 * len(CONVOLUTIONS)),
                             squeeze=False, layout="constrained")
    for row, layer in enumerate(CONVOLUTIONS):
        per_filter = parameters[f"{layer}.weight"].flatten(2).sum(2)  # (classes, filters)
        for k in range(classes):
            values, filters = per_filter[k].topk(TOP_FILTERS)
            axes[row, k].bar(range(TOP_FILTERS), values, color="tab:red")
            axes[row, k].set_xticks(range(TOP_FILTERS), [str(int(f)) for f in filters], fontsize=7)
            axes[row, k].tick_params(axis="y", labelsize=6)
            axes[row, k].set_title(f"conv {layer}, digit {k}", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the figures")
    parser.add_argument("--digit", type=int, default=3, help="class whose kernels are drawn (default: 3)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data()
    model = make_cnn()
    train(model, x_train, y_train)
    graph = graphlrp.lower(model, x_test[:1])
    # per parameter only: each convolution keeps one sum per kernel weight, not one per edge
    sums = graphlrp.aggregate(graph, x_test, y_test, composite=composites.EpsilonPlus(), by_class=True,
                              edges=False, progress=False)
    parameters = sums.parameter_relevance()
    print(f"summed over {sums.count} test digits; samples per class: {sums.class_counts.tolist()}")
    for name, values in parameters.items():
        print(f"  {name:10s} {tuple(values.shape[1:])!s:16s} total per class "
              f"{[round(float(v), 2) for v in values.flatten(1).sum(1)]}")
    args.out.mkdir(parents=True, exist_ok=True)
    for layer in CONVOLUTIONS:
        path = args.out / f"aggregate_conv{layer}.png"
        draw_kernels(parameters[f"{layer}.weight"][args.digit],
                     f"conv {layer}, digit {args.digit}\n(red +, blue −)", path)
        print(f"wrote {path}")
    path = args.out / "aggregate_filters.png"
    draw_filters(parameters, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
