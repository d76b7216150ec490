"""Explain a pruned MLP trained on scikit-learn's 8×8 digits.

Trains a small MLP (seconds), prunes 90% of its weights by magnitude with
``torch.nn.utils.prune``, fine-tunes it, lowers it to a graph (pruned weights are not edges) and
explains a test digit with a composite: z^B on the first layer (pixels are bounded in [0, 1]),
ε elsewhere. Prints the graph, the conservation table and the 10 most relevant edges, and writes
a heatmap of the input relevance to ``out/pruned_digits_relevance.png``.

Run: ``scripts/demo`` (or ``python examples/pruned_digits.py [--out DIR]``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from sklearn.datasets import load_digits

import graphlrp
from graphlrp import rules


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)  # (n, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the heatmap PNG")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data()

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    train(model, x_train, y_train, epochs=300)
    print(f"dense model: test accuracy {accuracy(model, x_test, y_test):.3f}")
    linears = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    prune.global_unstructured(linears, pruning_method=prune.L1Unstructured, amount=0.9)
    train(model, x_train, y_train, epochs=150)
    print(f"pruned to 10% of its weights and fine-tuned: test accuracy {accuracy(model, x_test, y_test):.3f}\n")

    graph = graphlrp.lower(model, x_test)
    print(graph, "\n")

    composite = graphlrp.Composite(first=rules.ZBox(low=0.0, high=1.0), default=rules.Epsilon(0.01))
    sample = x_test[:8]
    predicted = model(sample).argmax(1)
    explanation = graphlrp.explain(graph, sample, target=predicted, composite=composite)
    print(f"explaining sample 0 (label {int(y_test[0])}, predicted {int(predicted[0])}) with {composite}\n")
    print(explanation.conservation_table(sample=0), "\n")

    src, dst, weight = graph.edges()
    relevance = explanation.edge_relevance(0)
    top = torch.topk(relevance.abs(), 10).indices
    print("10 most relevant edges of sample 0:")
    for e in top.tolist():
        print(f"  {graph.node_label(int(src[e])):>14} -> {graph.node_label(int(dst[e])):<14} "
              f"weight {float(weight[e]):+.3f}  relevance {float(relevance[e]):+.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "pruned_digits_relevance.png"
    heat = explanation.input_relevance.detach()
    fig, axes = plt.subplots(2, len(sample), figsize=(1.8 * len(sample), 4.4), layout="constrained")
    for i in range(len(sample)):
        axes[0, i].imshow(sample[i], cmap="gray_r")
        axes[0, i].set_title(f"predicted {int(predicted[i])}")
        bound = float(heat[i].abs().max()) or 1.0
        axes[1, i].imshow(heat[i], cmap="bwr", vmin=-bound, vmax=bound)
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle("input (top) and its relevance for the predicted class (red +, blue −)")
    fig.savefig(path, dpi=100)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
