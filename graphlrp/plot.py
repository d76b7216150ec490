"""Pictures: heatmaps of input relevance and layered drawings of relevant sub-circuits.

matplotlib is imported on first use (it is an optional dependency: ``graphlrp[examples]``), so
``import graphlrp`` does not need it. Figures are built with ``matplotlib.figure.Figure``, not
``pyplot``: drawing changes neither the backend nor the figures of the caller's session.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Hashable, Sequence

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from .analysis import Circuit
from .errors import ArgumentTypeError, InputError
from .explanation import Explanation

if TYPE_CHECKING:  # matplotlib is optional
    from matplotlib.figure import Figure

#: colour map of relevance: blue negative, white zero, red positive
RELEVANCE_CMAP = "bwr"


def _figure_class() -> type["Figure"]:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'graphlrp[examples]'") from None
    return Figure


def _as_tensor(values: object, name: str) -> Tensor:
    """``values`` (a tensor or array) as a float64 tensor on the CPU."""
    try:
        return torch.as_tensor(np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values),
                               dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ArgumentTypeError(f"{name} must be a tensor or array of numbers, got {type(values).__name__}") from None


def _image(values: Tensor, name: str) -> Tensor:
    """``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` (summed over channels) as ``(H, W)``."""
    if values.dim() == 3:
        values = values.sum(0)
    if values.dim() != 2:
        raise InputError(f"{name}: a heatmap needs samples of shape (H, W) or (C, H, W), got {tuple(values.shape)}")
    return values


def heatmap_figure(
    relevance: Explanation | Tensor | np.ndarray,
    inputs: Tensor | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    scale: float | None = None,
) -> "Figure":
    """A figure of input-relevance heatmaps, one panel per sample, with one colour bar.

    All heatmaps share one symmetric colour scale, ``[-scale, scale]`` (red positive, blue
    negative, white zero), shown by the colour bar, so that panels can be compared: the same
    colour is the same relevance in every panel.

    Parameters
    ----------
    relevance : Explanation or Tensor or ndarray
        An :class:`~graphlrp.Explanation` of image inputs (its ``input_relevance``), or relevance
        ``(N, H, W)`` or ``(N, C, H, W)``: one heatmap per sample, channels summed.
    inputs : Tensor or ndarray, optional
        The inputs, ``N`` samples of the same image shape; drawn in grey above their heatmaps.
    titles : sequence of str, optional
        One title per sample.
    scale : float, optional
        The largest ``|relevance|`` of the colour scale (> 0), e.g. to compare several figures.
        Default: the largest over all panels (1 when all relevance is 0).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InputError
        For relevance of another shape, inputs or titles that do not match it, relevance that
        is NaN or infinite, or a ``scale`` that is not a positive finite number.
    ArgumentTypeError
        For relevance or inputs that are not arrays of numbers.
    ImportError
        Without matplotlib.
    """
    Figure = _figure_class()
    maps = _heatmaps(relevance)
    pictures = None if inputs is None else _inputs(inputs, len(maps))
    if titles is not None and len(titles) != len(maps):
        raise InputError(f"titles: need one per sample ({len(maps)}), got {len(titles)}")
    bound = _scale(maps, scale)
    rows = 1 if pictures is None else 2
    fig = Figure(figsize=(1.9 * len(maps) + 1.0, 2.0 * rows), layout="constrained")
    axes = fig.subplots(rows, len(maps), squeeze=False)
    for i, heat in enumerate(maps):
        image = axes[rows - 1, i].imshow(heat.numpy(), cmap=RELEVANCE_CMAP, vmin=-bound, vmax=bound)
        if pictures is not None:
            axes[0, i].imshow(pictures[i].numpy(), cmap="gray_r")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes[rows - 1]), label="relevance", shrink=0.9)
    return fig


def _heatmaps(relevance: Explanation | Tensor | np.ndarray) -> list[Tensor]:
    """One ``(H, W)`` heatmap per sample, checked finite."""
    if isinstance(relevance, Explanation):
        relevance = relevance.input_relevance
    values = _as_tensor(relevance, "relevance")
    if values.dim() not in (3, 4) or len(values) == 0:
        raise InputError(f"relevance must be (N, H, W) or (N, C, H, W) with N >= 1, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise InputError("relevance holds NaN or inf: it has no heatmap")
    return [_image(r, "relevance") for r in values]


def _inputs(inputs: Tensor | np.ndarray, count: int) -> list[Tensor]:
    """The first ``count`` inputs as ``(H, W)`` images."""
    values = _as_tensor(inputs, "inputs")
    if values.dim() not in (3, 4) or len(values) != count:
        raise InputError(f"inputs must be {count} samples (N, H, W) or (N, C, H, W), like the relevance, got shape "
                         f"{tuple(values.shape)}")
    return [_image(x, "inputs") for x in values]


def _scale(maps: list[Tensor], scale: float | None) -> float:
    """The colour scale's bound: ``scale``, or the largest ``|relevance|`` of all maps (1 if all are 0)."""
    if scale is None:
        return max(float(heat.abs().max()) for heat in maps) or 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise InputError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def save_heatmaps(
    relevance: Explanation | Tensor | np.ndarray,
    path: str | Path,
    inputs: Tensor | np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    scale: float | None = None,
) -> Path:
    """Save :func:`heatmap_figure` (one shared, symmetric colour scale with a colour bar) as PNG or SVG.

    Parameters
    ----------
    relevance : Explanation or Tensor or ndarray
        An explanation of image inputs, or relevance ``(N, H, W)`` or ``(N, C, H, W)``.
    path : str or Path
        Where to write; the format follows the suffix (``.png``, ``.svg``, ...).
    inputs, titles, scale
        As for :func:`heatmap_figure`.

    Returns
    -------
    Path
        ``path``.
    """
    return _save(heatmap_figure(relevance, inputs, titles, scale), path, dpi=100)


def circuit_graph(circuit: Circuit) -> nx.DiGraph:
    """A circuit's edges as a ``networkx.DiGraph`` with the attributes :func:`draw_circuit` reads.

    Nodes are global node ids with ``level``, ``layer`` (level name), ``label``
    (:meth:`Graph.node_label`) and ``relevance`` (of the circuit's sample); edges carry
    ``relevance``, summed over parallel edges.
    """
    explanation = circuit.explanation
    levels = explanation.graph.levels
    offsets = np.array([level.offset for level in levels])
    nodes = circuit.nodes.cpu().numpy()
    level_of = np.searchsorted(offsets, nodes, side="right") - 1
    relevance = explanation.node_relevance[circuit.sample].detach().cpu().to(torch.float64).numpy()
    G = nx.DiGraph(sample=circuit.sample, fraction=circuit.fraction)
    G.add_nodes_from((int(n), {"level": int(l), "layer": levels[l].name, "label": explanation.graph.node_label(int(n)),
                               "relevance": float(relevance[n])}) for n, l in zip(nodes, level_of))
    for u, v, r in zip(circuit.src.tolist(), circuit.dst.tolist(), circuit.relevance.detach().cpu().tolist()):
        G.add_edge(u, v, relevance=G.edges[u, v]["relevance"] + r if G.has_edge(u, v) else r)
    return G


def circuit_figure(circuit: Circuit | nx.DiGraph, label_nodes: bool = True) -> "Figure":
    """A circuit drawn as layers: nodes by level left to right, edge width and colour by relevance.

    Nodes are coloured by their relevance on a symmetric scale shown by a colour bar; an edge's
    width is proportional to its ``|relevance|`` (red positive, blue negative).

    Parameters
    ----------
    circuit : Circuit or networkx.DiGraph
        A :class:`~graphlrp.analysis.Circuit` (:func:`graphlrp.analysis.relevant_circuit`), or a
        graph from :func:`graphlrp.export.explanation_to_networkx` (nodes with ``level``, edges
        with ``relevance``).
    label_nodes : bool
        Write each node's ``label`` (or id) beside it.

    Raises
    ------
    InputError
        For a circuit without nodes.
    ArgumentTypeError
        For another kind of object.
    ImportError
        Without matplotlib.
    """
    Figure = _figure_class()
    graph = _circuit_as_graph(circuit)
    levels: dict[int, list[Hashable]] = {}
    for node, data in graph.nodes(data=True):
        levels.setdefault(int(data.get("level", 0)), []).append(node)
    position = _layered_positions(graph, levels)
    relevances = [float(r) for _, _, r in graph.edges(data="relevance", default=0.0)]
    edge_scale = max((abs(r) for r in relevances), default=1.0) or 1.0
    fig = Figure(figsize=(2.2 * len(levels) + 2, 0.35 * max(len(m) for m in levels.values()) + 2),
                 layout="constrained")
    ax = fig.subplots()
    for (u, v), r in zip(graph.edges(), relevances):
        (x0, y0), (x1, y1) = position[u], position[v]
        ax.plot([x0, x1], [y0, y1], color="tab:red" if r >= 0 else "tab:blue", alpha=0.8,
                linewidth=0.5 + 4.0 * abs(r) / edge_scale, zorder=1)
    node_relevance = [float(graph.nodes[n].get("relevance", 0.0)) for n in position]
    bound = max((abs(r) for r in node_relevance), default=1.0) or 1.0
    xs, ys = zip(*position.values())
    dots = ax.scatter(xs, ys, c=node_relevance, cmap=RELEVANCE_CMAP, vmin=-bound, vmax=bound, s=60,
                      edgecolors="black", linewidths=0.5, zorder=2)
    if label_nodes:
        for node, (x, y) in position.items():
            ax.annotate(str(graph.nodes[node].get("label", node)), (x, y), fontsize=6, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels([_level_name(graph, levels[l][0]) for l in sorted(levels)], fontsize=8)
    ax.set_yticks([])
    ax.set_title("relevant circuit (red +, blue −; width ∝ |relevance|)")
    fig.colorbar(dots, ax=ax, label="node relevance", shrink=0.8)
    return fig


def _circuit_as_graph(circuit: Circuit | nx.DiGraph) -> nx.DiGraph:
    if isinstance(circuit, Circuit):
        circuit = circuit_graph(circuit)
    elif not isinstance(circuit, nx.DiGraph):
        raise ArgumentTypeError(f"circuit must be a graphlrp.analysis.Circuit or a networkx.DiGraph, got "
                                f"{type(circuit).__name__}")
    if circuit.number_of_nodes() == 0:
        raise InputError("the circuit has no nodes to draw")
    return circuit


def _layered_positions(graph: nx.DiGraph, levels: dict[int, list[Hashable]]) -> dict[Hashable, tuple[float, float]]:
    """Per node: its level's column, and a row by decreasing ``|relevance|``, centred."""
    position = {}
    for column, level in enumerate(sorted(levels)):
        members = sorted(levels[level], key=lambda n: -abs(float(graph.nodes[n].get("relevance", 0.0))))
        for row, node in enumerate(members):
            position[node] = (column, -(row - (len(members) - 1) / 2))
    return position


def draw_circuit(circuit: Circuit | nx.DiGraph, path: str | Path, label_nodes: bool = True) -> Path:
    """Save :func:`circuit_figure` of a :class:`~graphlrp.analysis.Circuit` or networkx graph.

    Parameters
    ----------
    circuit : Circuit or networkx.DiGraph
        As for :func:`circuit_figure`.
    path : str or Path
        Where to write; PNG or SVG by the suffix.
    label_nodes : bool
        Write each node's label beside it.

    Returns
    -------
    Path
        ``path``.
    """
    return _save(circuit_figure(circuit, label_nodes), path, dpi=110)


def _save(fig: "Figure", path: str | Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` (creating its directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _level_name(graph: nx.DiGraph, node: Hashable) -> str:
    data = graph.nodes[node]
    return str(data.get("layer", data.get("level", "")))
