"""Pictures: heatmaps of input relevance and layered drawings of relevant sub-circuits.

matplotlib is imported on first use (it is an optional dependency: ``graphlrp[examples]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import networkx as nx
import torch
from torch import Tensor


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'graphlrp[examples]'") from None
    return plt


def _image(relevance: Tensor) -> Tensor:
    """``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` (summed over channels) as ``(H, W)``."""
    relevance = torch.as_tensor(relevance).detach().cpu().to(torch.float64)
    if relevance.dim() == 3:
        relevance = relevance.sum(0)
    if relevance.dim() != 2:
        raise ValueError(f"a heatmap needs relevance of shape (H, W) or (C, H, W), got {tuple(relevance.shape)}")
    return relevance


def save_heatmaps(
    relevance: Tensor,
    path: str | Path,
    inputs: Tensor | None = None,
    titles: Sequence[str] | None = None,
) -> Path:
    """Save heatmaps of input relevance (red positive, blue negative, symmetric scale) as a PNG.

    Parameters
    ----------
    relevance : Tensor
        ``(N, H, W)`` or ``(N, C, H, W)``: one heatmap per sample (channels are summed).
    path : str or Path
        Where to write the PNG.
    inputs : Tensor, optional
        The inputs, same leading shape; drawn in grey above their heatmaps.
    titles : sequence of str, optional
        One title per sample.
    """
    plt = _pyplot()
    maps = [_image(r) for r in relevance]
    rows = 2 if inputs is not None else 1
    fig, axes = plt.subplots(rows, len(maps), figsize=(1.9 * len(maps), 2.0 * rows), squeeze=False,
                             layout="constrained")
    for i, heat in enumerate(maps):
        bound = float(heat.abs().max()) or 1.0
        axes[rows - 1, i].imshow(heat.numpy(), cmap="bwr", vmin=-bound, vmax=bound)
        if inputs is not None:
            axes[0, i].imshow(_image(inputs[i]).numpy(), cmap="gray_r")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def draw_circuit(graph: nx.DiGraph, path: str | Path, label_nodes: bool = True) -> Path:
    """Draw a (sub-)circuit as layers: nodes by level left to right, edge width and colour by relevance.

    ``graph`` is a networkx graph from :func:`graphlrp.export.explanation_to_networkx` (nodes with a
    ``level`` attribute, edges with ``relevance``). Writes PNG or SVG, by the file's suffix.
    """
    plt = _pyplot()
    if graph.number_of_nodes() == 0:
        raise ValueError("the circuit has no nodes to draw")
    levels: dict[int, list] = {}
    for node, data in graph.nodes(data=True):
        levels.setdefault(int(data.get("level", 0)), []).append(node)
    position = {}
    for column, level in enumerate(sorted(levels)):
        members = sorted(levels[level], key=lambda n: -abs(float(graph.nodes[n].get("relevance", 0.0))))
        for row, node in enumerate(members):
            position[node] = (column, -(row - (len(members) - 1) / 2))
    relevances = [float(d.get("relevance", 0.0)) for _, _, d in graph.edges(data=True)]
    scale = max((abs(r) for r in relevances), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(2.2 * len(levels) + 1, 0.35 * max(len(m) for m in levels.values()) + 2))
    for (u, v), r in zip(graph.edges(), relevances):
        (x0, y0), (x1, y1) = position[u], position[v]
        ax.plot([x0, x1], [y0, y1], color="tab:red" if r >= 0 else "tab:blue", alpha=0.8,
                linewidth=0.5 + 4.0 * abs(r) / scale, zorder=1)
    node_relevance = [float(graph.nodes[n].get("relevance", 0.0)) for n in position]
    bound = max((abs(r) for r in node_relevance), default=1.0) or 1.0
    xs, ys = zip(*position.values())
    ax.scatter(xs, ys, c=node_relevance, cmap="bwr", vmin=-bound, vmax=bound, s=60, edgecolors="black",
               linewidths=0.5, zorder=2)
    if label_nodes:
        for node, (x, y) in position.items():
            ax.annotate(str(graph.nodes[node].get("label", node)), (x, y), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([_level_name(graph, levels[l][0]) for l in sorted(levels)], fontsize=8)
    ax.set_yticks([])
    ax.set_title("relevant circuit (red +, blue −; width ∝ |relevance|)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _level_name(graph: nx.DiGraph, node) -> str:
    data = graph.nodes[node]
    return str(data.get("layer", data.get("level", "")))
