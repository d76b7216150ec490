"""Explain a small CNN trained on scikit-learn's 8×8 digits with three LRP composites.

Trains a CNN (Conv → ReLU → MaxPool → Conv → ReLU → AvgPool → Linear) on the digits (real data,
shipped with scikit-learn) in a few seconds, lowers it to a graph, explains six test digits with
ε everywhere, ``EpsilonPlus`` (z⁺ on convolutions) and ``EpsilonAlpha2Beta1`` (αβ on
convolutions), prints the conservation table of each and writes a grid of heatmaps to
``out/digits_cnn_relevance.png``.

Run: ``python examples/digits_cnn.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import graphlrp
from graphlrp import composites, rules


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


def make_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 10),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the heatmap PNG")
    args = parser.parse_args()
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data()
    model = make_cnn()
    train(model, x_train, y_train)
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    print(f"CNN test accuracy: {accuracy:.3f}\n")

    graph = graphlrp.lower(model, x_test[:1])
    print(graph, "\n")
    samples = x_test[:6]
    predicted = model(samples).argmax(1)
    explainers = {
        "ε": graphlrp.Composite(default=rules.Epsilon(0.01)),
        "EpsilonPlus (z⁺)": composites.EpsilonPlus(),
        "EpsilonAlpha2Beta1 (αβ)": composites.EpsilonAlpha2Beta1(),
    }
    heatmaps = {}
    for name, composite in explainers.items():
        explanation = graphlrp.explain(graph, samples, target=predicted, composite=composite)
        heatmaps[name] = explanation.input_relevance[:, 0].detach()
        print(f"{name}: conservation of sample 0 (logit {float(explanation.output[0, predicted[0]]):+.4f})")
        print(explanation.conservation_table(sample=0), "\n")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "digits_cnn_relevance.png"
    rows = 1 + len(heatmaps)
    fig, axes = plt.subplots(rows, len(samples), figsize=(1.8 * len(samples), 1.9 * rows), layout="constrained")
    for i in range(len(samples)):
        axes[0, i].imshow(samples[i, 0], cmap="gray_r")
        axes[0, i].set_title(f"predicted {int(predicted[i])}", fontsize=9)
        for row, (name, heat) in enumerate(heatmaps.items(), start=1):
            bound = float(heat[i].abs().max()) or 1.0
            axes[row, i].imshow(heat[i], cmap="bwr", vmin=-bound, vmax=bound)
            if i == 0:
                axes[row, i].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
