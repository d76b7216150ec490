"""An explanation as a ``networkx`` graph of relevance, and files that Gephi and Cytoscape open.

:func:`explanation_to_networkx` turns the relevance of every node and every edge into a
``networkx.DiGraph`` keyed by global node id; :func:`write_graphml` / :func:`read_graphml` and
:func:`write_json` / :func:`read_json` store it and read it back with every attribute exactly as
it was (floats to the last bit).

Edges are streamed run by run (:meth:`graphlrp.Explanation.message_runs`), several samples
reduced (``aggregate``) within each run: never every edge's relevance at once, never
``samples × edges``.
"""
from __future__ import annotations

import inspect
import io
import json
import math
import numbers
import operator
import os
import xml.parsers.expat
from xml.etree import ElementTree
from typing import Any, Iterator, Literal

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from . import streaming
from .errors import ArgumentTypeError, FileFormatError, InputError
from .samples import ExplanationLike, Samples, check_explanation, is_index

Aggregate = Literal["sum", "mean", "mean_abs"]
AGGREGATES = ("sum", "mean", "mean_abs")

#: most edge values per ``(samples, edges)`` chunk when several samples are reduced
CHUNK_ELEMENTS = 1 << 22

#: the node attribute and the graph attribute that hold tuples, which GraphML stores as text
_POSITION = "position"
_SAMPLES = "samples"


# -- samples and argument checks ------------------------------------------------------------------
def sample_rows(explanation: ExplanationLike, sample: Samples, allow_empty: bool = False) -> list[int]:
    """:meth:`graphlrp.Explanation.sample_rows`, after checking that ``explanation`` is one."""
    check_explanation(explanation)
    return explanation.sample_rows(sample, allow_empty)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int; :class:`ArgumentTypeError` if it is none, :class:`InputError` below ``minimum``."""
    if not is_index(value):
        raise ArgumentTypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if operator.index(value) < minimum:
        raise InputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return operator.index(value)


def check_bool(name: str, value: object) -> None:
    """Raise :class:`ArgumentTypeError` unless ``value`` is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def _chunks(rows: list[int], num_edges: int) -> Iterator[list[int]]:
    size = max(1, CHUNK_ELEMENTS // max(num_edges, 1))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def edge_relevance_chunks(explanation: ExplanationLike, sample: Samples = None) -> Iterator[Tensor]:
    """Edge relevance of the samples asked, ``(chunk, num_edges)`` at a time (see :data:`CHUNK_ELEMENTS`)."""
    for chunk in _chunks(sample_rows(explanation, sample), explanation.graph.num_edges):
        yield explanation.edge_relevance(chunk)


# -- per-node and per-edge values ---------------------------------------------------------------
def bias_relevance(explanation: ExplanationLike, sample: Samples = None) -> Tensor:
    """:meth:`graphlrp.Explanation.bias_relevance`, after checking that ``explanation`` is one."""
    check_explanation(explanation)
    return explanation.bias_relevance(sample)


def edge_contributions(explanation: ExplanationLike, sample: Samples = None) -> Tensor:
    """:meth:`graphlrp.Explanation.edge_contributions`, after checking that ``explanation`` is one."""
    check_explanation(explanation)
    return explanation.edge_contributions(sample)


def _fold(values: Tensor, aggregate: Aggregate) -> Tensor:
    """Sum over samples (dim 0), of absolute values for ``'mean_abs'``: row after row, so that
    every entry is summed in sample order whatever part of the columns is at hand."""
    rows = values.abs() if aggregate == "mean_abs" else values
    if len(rows) == 1:
        return rows[0]
    total = rows[0].clone()
    for row in rows[1:]:
        total += row
    return total


def _reduce(values: Tensor, aggregate: Aggregate, count: int) -> Tensor:
    """Finish an aggregate from its sum over ``count`` samples."""
    return values if aggregate == "sum" else values / count


def _node_values(explanation: ExplanationLike, rows: list[int], aggregate: Aggregate) -> dict[str, Tensor]:
    """Aggregated relevance, output and bias share of every node."""
    index = torch.tensor(rows, dtype=torch.long, device=explanation.node_relevance.device)
    activations = torch.cat([a.index_select(0, index) for a in explanation.activations], dim=1)
    values = {
        "relevance": explanation.node_relevance.index_select(0, index),
        "activation_value": activations,
        "bias_share": explanation.bias_relevance(rows),
    }
    return {name: _reduce(_fold(v, aggregate), aggregate, len(rows)) for name, v in values.items()}


# -- choosing edges -----------------------------------------------------------------------------
def edges_holding_mass(magnitude: np.ndarray, fraction: float) -> np.ndarray:
    """The fewest entries whose sum reaches ``fraction`` of the total, largest first.

    Taking entries by decreasing magnitude is optimal: no smaller set reaches the fraction. Sums
    are exact (:mod:`graphlrp.streaming`); ties keep index order. An all-zero ``magnitude`` gives
    no entries.

    Parameters
    ----------
    magnitude : ndarray
        Non-negative finite values, e.g. ``|edge relevance|``.
    fraction : float
        In ``(0, 1]``.

    Returns
    -------
    ndarray of int
        Indices into ``magnitude``, by decreasing magnitude.
    """
    check_fraction("mass", fraction)
    chosen = streaming.select(_one_run(magnitude), mass=fraction)
    order = np.argsort(-_numpy(chosen.magnitudes), kind="stable")
    return _numpy(chosen.positions)[order] if len(order) else np.zeros(0, dtype=np.int64)


def _one_run(magnitude: np.ndarray) -> streaming.Runs:
    values = torch.from_numpy(np.ascontiguousarray(magnitude))
    return lambda: iter([streaming.listed_run(0, values)])


def check_fraction(name: str, fraction: float) -> None:
    """Raise :class:`ArgumentTypeError` unless ``fraction`` is a real number, :class:`InputError` unless ``0 < fraction <= 1``."""
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a fraction in (0, 1], got {fraction!r} ({type(fraction).__name__})")
    if not 0 < fraction <= 1:
        raise InputError(f"{name} must be a fraction in (0, 1], got {fraction!r}")


def select_edges(
    magnitude: np.ndarray, top_k: int | None = None, threshold: float | None = None, mass: float | None = None
) -> np.ndarray:
    """Indices (ascending) of the entries that pass every criterion given (all without any).

    The selection of :func:`graphlrp.streaming.select` over one run: the same as over the
    entries cut into any runs.

    Parameters
    ----------
    magnitude : ndarray
        Non-negative finite values, e.g. ``|edge relevance|``.
    top_k : int, optional
        Keep the ``top_k`` largest (ties in index order).
    threshold : float, optional
        Keep those ``>= threshold`` (compared exactly).
    mass : float, optional
        Keep the fewest, largest first, that hold this fraction of the total
        (:func:`edges_holding_mass`).
    """
    check_selection(top_k, threshold, mass)
    chosen = streaming.select(_one_run(magnitude), top_k, threshold, mass)
    return _numpy(chosen.positions) if len(chosen.positions) else np.zeros(0, dtype=np.int64)


def check_selection(top_k: object, threshold: object, mass: object) -> None:
    """Check the criteria of :func:`select_edges` (each may be ``None``).

    Raises
    ------
    ArgumentTypeError
        For a ``top_k`` that is not an int, or a ``threshold`` or ``mass`` that is not a real number.
    InputError
        For a negative ``top_k``, a NaN ``threshold`` or a ``mass`` outside ``(0, 1]``.
    """
    if top_k is not None:
        check_int("top_k", top_k, 0)
    if threshold is not None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
            raise ArgumentTypeError(f"threshold must be a real number, got {threshold!r} ({type(threshold).__name__})")
        if math.isnan(threshold):
            raise InputError("threshold must be a number, got NaN")
    if mass is not None:
        check_fraction("mass", mass)


# -- building the networkx graph ----------------------------------------------------------------
def explanation_to_networkx(
    explanation: ExplanationLike,
    sample: Samples = 0,
    aggregate: Aggregate = "sum",
    top_k: int | None = None,
    threshold: float | None = None,
    mass: float | None = None,
    keep_all_nodes: bool = False,
) -> nx.DiGraph:
    """The explained network as a ``networkx.DiGraph`` carrying relevance on nodes and edges.

    Parameters
    ----------
    explanation : Explanation
    sample : int or sequence of int or None
        One sample of the batch, several (reduced by ``aggregate``), or ``None`` for all.
    aggregate : {'sum', 'mean', 'mean_abs'}
        How several samples' values are reduced: their sum, mean, or mean of absolute values.
        Ignored for an int ``sample``. With ``'sum'`` and ``'mean'`` an edge's relevance still
        sums, over a node's outgoing edges, to the node's relevance.
    top_k, threshold, mass : optional
        Keep only the edges that matter, by ``|relevance|`` (see :func:`select_edges`): the
        ``top_k`` largest, those ``>= threshold``, the fewest holding the fraction ``mass`` of
        the total (sums exact; ties by edge order, the earlier edge first). Given together, an
        edge must pass all of them. Default: every edge. The edges are streamed run by run
        (:meth:`Explanation.message_runs`): memory holds the kept edges and one run, never
        every edge's relevance (two passes for ``mass``).
    keep_all_nodes : bool
        Keep every node, not only the endpoints of the kept edges.

    Returns
    -------
    networkx.DiGraph
        Nodes are global node ids, in ascending order, with attributes ``id`` (the same id),
        ``level`` (index), ``layer`` (level name), ``layer_type``, ``position`` (tuple index in
        the level's tensor, e.g. ``(channel, row, col)``), ``activation`` (name),
        ``relevance``, ``activation_value`` (the output ``a_j``) and ``bias_share`` (relevance
        absorbed by the bias term, :func:`bias_relevance`). Edges carry ``weight``,
        ``contribution`` (``a_i · w_ij``, aggregated like relevance) and ``relevance`` (the
        message); parallel edges (two blocks between the same levels) are summed into one.
        ``G.graph`` holds ``samples`` (tuple), ``aggregate``,
        ``edges_total`` (edges before filtering) and ``mass_kept`` (fraction of the total
        ``|relevance|`` on the kept edges).

    Raises
    ------
    ArgumentTypeError
        For an ``explanation`` that is not one, or a sample, ``top_k``, ``threshold``, ``mass``
        or ``keep_all_nodes`` of the wrong type.
    InputError
        For an unknown ``aggregate``, a ``sample`` that selects no samples, a negative ``top_k``,
        a NaN ``threshold`` or a ``mass`` outside ``(0, 1]``.
    IndexOutOfRangeError
        For a sample out of range.
    """
    check_explanation(explanation)
    if not isinstance(aggregate, str) or aggregate not in AGGREGATES:
        raise InputError(f"unknown aggregate {aggregate!r}; choose one of {AGGREGATES}")
    check_bool("keep_all_nodes", keep_all_nodes)
    check_selection(top_k, threshold, mass)
    rows = sample_rows(explanation, sample)
    mode: Aggregate = "sum" if is_index(sample) else aggregate
    graph = explanation.graph

    def runs() -> Iterator[streaming.Run]:
        for run in explanation.message_runs(rows, contributions=True):
            relevance = _reduce(_fold(run.layout, mode), mode, len(rows))
            contribution = _reduce(_fold(run.contribution_layout, mode), mode, len(rows))

            def take(index: Tensor, run=run, relevance=relevance,
                     contribution=contribution) -> tuple[Tensor, list[Tensor]]:
                positions, src, dst, weight = run.take(index)
                return positions, [src, dst, weight, contribution[index], relevance[index]]

            yield streaming.Run(relevance.abs(), run.valid, take)

    chosen = streaming.select(runs, top_k, threshold, mass)
    if chosen.payload:
        src, dst, *columns = (_numpy(t) for t in chosen.payload)
    else:
        src = dst = np.zeros(0, dtype=np.int64)
        columns = [np.zeros(0) for _ in range(3)]
    src, dst, columns = _merge_parallel_edges(src, dst, columns, graph.num_nodes)
    nodes = np.arange(graph.num_nodes) if keep_all_nodes else np.unique(np.concatenate([src, dst]))
    G = nx.DiGraph(samples=tuple(rows), aggregate=mode, edges_total=graph.num_edges, mass_kept=chosen.fraction)
    G.add_nodes_from(_node_records(explanation, nodes, _node_values(explanation, rows, mode)))
    G.add_edges_from(_edge_records(src, dst, *columns))
    return G


def _numpy(tensor: Tensor) -> np.ndarray:
    """``tensor`` as an array of its own precision (bfloat16, which numpy lacks, as float32, which holds it exactly)."""
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _merge_parallel_edges(
    src: np.ndarray, dst: np.ndarray, columns: list[np.ndarray], num_nodes: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Sum the values of repeated ``(src, dst)`` pairs (two blocks between the same levels may share one)."""
    unique, inverse = np.unique(src * num_nodes + dst, return_inverse=True)
    if len(unique) == len(src):
        return src, dst, columns
    merged = [np.bincount(inverse, weights=column, minlength=len(unique)) for column in columns]
    return unique // num_nodes, unique % num_nodes, merged


def _node_records(explanation: ExplanationLike, nodes: np.ndarray, values: dict[str, Tensor]) -> Iterator[tuple]:
    levels = explanation.graph.levels
    level_of = np.searchsorted(np.array([level.offset for level in levels]), nodes, side="right") - 1
    positions: list[tuple[int, ...]] = [()] * len(nodes)
    for level in levels:
        members = np.flatnonzero(level_of == level.index)
        coordinates = np.unravel_index(nodes[members] - level.offset, level.shape)
        for slot, position in zip(members.tolist(), zip(*(c.tolist() for c in coordinates))):
            positions[slot] = position
    columns = {name: _numpy(v)[nodes].tolist() for name, v in values.items()}
    for node, level_index, position, relevance, output, bias_share in zip(
        nodes.tolist(), level_of.tolist(), positions, columns["relevance"], columns["activation_value"],
        columns["bias_share"],
    ):
        level = levels[level_index]
        yield node, {
            "id": node, "level": level_index, "layer": level.name, "layer_type": level.type_name,
            "position": position, "activation": level.activation.name, "relevance": relevance,
            "activation_value": output, "bias_share": bias_share,
        }


def _edge_records(src, dst, weight, contribution, relevance) -> Iterator[tuple]:
    """``(u, v, attributes)`` per edge, from plain lists: no per-edge array indexing."""
    attributes = (
        {"weight": w, "contribution": c, "relevance": r}
        for w, c, r in zip(weight.tolist(), contribution.tolist(), relevance.tolist())
    )
    return zip(src.tolist(), dst.tolist(), attributes)


# -- files --------------------------------------------------------------------------------------
#: what the readers and writers hold: a graph of :func:`explanation_to_networkx`
_EXPECTED = ("a graph of graphlrp.export.explanation_to_networkx: a directed graph (not a multigraph) with int "
             "node ids, a 'position' tuple of ints on every node and a 'samples' tuple of ints in G.graph")

#: exceptions networkx's GraphML reader raises for a file that is not well-formed GraphML of this kind
_GRAPHML_ERRORS = (ElementTree.ParseError, nx.NetworkXError, ValueError, KeyError, TypeError, AttributeError,
                   IndexError, RecursionError, UnicodeError)


def write_graphml(G: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write ``G`` (from :func:`explanation_to_networkx`) as GraphML, for Gephi, Cytoscape or yEd.

    GraphML holds only scalars: ``position`` and ``G.graph['samples']`` are written as text,
    comma-separated (``(3, 4)`` → ``"3,4"``); :func:`read_graphml` turns them back. Floats are
    written with ``repr`` precision, so they read back exactly. ``G`` is not modified, and the
    file is written only once the whole document has been built.

    Raises
    ------
    ArgumentTypeError
        If ``G`` is not a ``networkx.DiGraph``.
    InputError
        If ``G`` is not a graph of :func:`explanation_to_networkx` (see :func:`read_graphml`),
        or holds an attribute GraphML cannot store (a tuple, list or ``None`` other than
        ``position`` and ``samples``).
    """
    _check_explanation_graph(G, "G", InputError)
    document = io.BytesIO()
    try:
        nx.write_graphml(_with_text_tuples(G), document)
    except nx.NetworkXError as error:
        raise InputError(f"G cannot be written as GraphML: {error} (GraphML holds numbers, text and booleans; "
                         "write_json holds lists too)") from None
    with open(path, "wb") as file:
        file.write(document.getvalue())


def read_graphml(path: str | os.PathLike) -> nx.DiGraph:
    """Read a file of :func:`write_graphml` back into the graph that was written (int node ids, tuples).

    Only files that hold a graph of :func:`explanation_to_networkx` are read (use
    ``networkx.read_graphml`` for any other GraphML file). A document type that declares
    entities is refused before the file is parsed, so entity expansion never runs.

    Raises
    ------
    FileFormatError
        If the file is not well-formed XML, not GraphML, declares entities, or does not hold a
        graph of :func:`explanation_to_networkx`; the message names the file.
    OSError
        If the file cannot be opened (``FileNotFoundError``, ``IsADirectoryError``, ...).
    """
    _refuse_entities(path)
    try:
        G = nx.read_graphml(path, node_type=int)
    except _GRAPHML_ERRORS as error:
        raise FileFormatError(f"{os.fspath(path)!r} is not a GraphML file of write_graphml: "
                              f"{type(error).__name__}: {error}; expected {_EXPECTED}") from None
    if not G.is_directed() or G.is_multigraph():
        raise FileFormatError(f"{os.fspath(path)!r} holds an undirected graph or a multigraph; expected {_EXPECTED}")
    for default in ("node_default", "edge_default"):  # added by networkx's reader, empty for our files
        G.graph.pop(default, None)
    for node, data in G.nodes.items():
        data[_POSITION] = _parsed_tuple(path, f"node {node!r} attribute {_POSITION!r}", data.get(_POSITION, _MISSING))
    G.graph[_SAMPLES] = _parsed_tuple(path, f"graph attribute {_SAMPLES!r}", G.graph.get(_SAMPLES, _MISSING))
    _check_explanation_graph(G, repr(os.fspath(path)), FileFormatError)
    return G


def write_json(G: nx.DiGraph, path: str | os.PathLike) -> None:
    """Write ``G`` as node-link JSON: ``nodes`` and ``edges`` lists, as D3 and ``networkx.node_link_data`` use.

    Tuples are written as JSON lists and floats with ``repr`` precision; :func:`read_json` reads
    the graph back exactly. (For Gephi and Cytoscape, prefer :func:`write_graphml`.) ``G`` is
    not modified, and the file is written only once the whole document has been built.

    Raises
    ------
    ArgumentTypeError
        If ``G`` is not a ``networkx.DiGraph``.
    InputError
        If ``G`` is not a graph of :func:`explanation_to_networkx` (see :func:`read_json`), or
        holds an attribute JSON cannot store.
    """
    _check_explanation_graph(G, "G", InputError)
    try:
        document = json.dumps(nx.node_link_data(G, **_node_link_keywords()))
    except (TypeError, ValueError) as error:
        raise InputError(f"G cannot be written as JSON: {error}") from None
    with open(path, "w", encoding="utf-8") as file:
        file.write(document)


def read_json(path: str | os.PathLike) -> nx.DiGraph:
    """Read a file of :func:`write_json` back into the graph that was written.

    Only plain JSON is parsed (never pickle); only files that hold a graph of
    :func:`explanation_to_networkx` are read.

    Raises
    ------
    FileFormatError
        If the file is not UTF-8 JSON, is nested too deeply to parse, or does not hold the
        node-link data of a graph of :func:`explanation_to_networkx`; the message names the file
        and what is missing.
    OSError
        If the file cannot be opened (``FileNotFoundError``, ``IsADirectoryError``, ...).
    """
    name = repr(os.fspath(path))
    with open(path, encoding="utf-8") as file:
        try:
            data = json.load(file)
        except (json.JSONDecodeError, UnicodeError, RecursionError) as error:
            reason = "it is nested too deeply" if isinstance(error, RecursionError) else f"{error}"
            raise FileFormatError(f"{name} is not a JSON file of write_json: {reason}") from None
    keywords = _node_link_keywords()
    _check_node_link(data, name, keywords.get("edges", "links"))
    G = nx.node_link_graph(data, directed=True, multigraph=False, **keywords)
    for node, data in G.nodes.items():
        data["id"] = node  # node-link JSON stores the ``id`` attribute as the node's key
        data[_POSITION] = tuple(data[_POSITION])
    G.graph[_SAMPLES] = tuple(G.graph[_SAMPLES])
    _check_explanation_graph(G, name, FileFormatError)
    return G


def _node_link_keywords() -> dict[str, Any]:
    """``edges='edges'`` where networkx supports it (3.4+), else its default ``'links'``."""
    return {"edges": "edges"} if "edges" in inspect.signature(nx.node_link_data).parameters else {}


def _check_node_link(data: object, name: str, edges: str) -> None:
    """Refuse JSON that is not node-link data of a directed graph with int node ids."""
    def refuse(what: str) -> None:
        raise FileFormatError(f"{name} is not node-link JSON of write_json: {what}; expected a JSON object with "
                              f"'nodes', {edges!r} and 'graph', holding {_EXPECTED}")

    if not isinstance(data, dict):
        refuse(f"it holds a JSON {type(data).__name__}")
    for key, kind in (("nodes", list), (edges, list), ("graph", dict)):
        if not isinstance(data.get(key), kind):
            refuse(f"{key!r} is missing" if key not in data else f"{key!r} is a {type(data[key]).__name__}")
    if data.get("directed", True) is not True or data.get("multigraph", False) is not False:
        refuse("it holds an undirected graph or a multigraph")
    for position, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or not _is_plain_int(node.get("id")):
            refuse(f"node {position} is not an object with an int 'id'")
        if not _is_int_list(node.get(_POSITION)):
            refuse(f"node {node['id']} has no {_POSITION!r} list of ints")
    for position, edge in enumerate(data[edges]):
        if not isinstance(edge, dict) or not (_is_plain_int(edge.get("source")) and _is_plain_int(edge.get("target"))):
            refuse(f"edge {position} is not an object with int 'source' and 'target'")
    if not _is_int_list(data["graph"].get(_SAMPLES)):
        refuse(f"the graph has no {_SAMPLES!r} list of ints")


def _is_plain_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(_is_plain_int(v) for v in value)


def _check_explanation_graph(G: object, name: str, error: type[Exception]) -> None:
    """Raise ``error`` unless ``G`` is a graph of :func:`explanation_to_networkx` (as far as files hold it)."""
    if not isinstance(G, nx.DiGraph):
        raise ArgumentTypeError(f"{name} must be a networkx.DiGraph from explanation_to_networkx, "
                                f"got {type(G).__name__}")
    if G.is_multigraph():
        raise error(f"{name} is a multigraph; expected {_EXPECTED}")
    for node, data in G.nodes.items():
        if not _is_plain_int(node):
            raise error(f"{name} has the node {node!r}, which is not an int id; expected {_EXPECTED}")
        if not isinstance(data.get(_POSITION), tuple) or not _is_int_list(data[_POSITION]):
            raise error(f"{name}: node {node} has no {_POSITION!r} tuple of ints; expected {_EXPECTED}")
    if not isinstance(G.graph.get(_SAMPLES), tuple) or not _is_int_list(G.graph[_SAMPLES]):
        raise error(f"{name} has no graph attribute {_SAMPLES!r} (a tuple of ints); expected {_EXPECTED}")


def _refuse_entities(path: str | os.PathLike) -> None:
    """Raise :class:`FileFormatError` if the XML prolog of ``path`` declares an entity.

    Only the prolog is read: parsing stops at the root element's start tag.
    """
    class _RootReached(Exception):
        pass

    def entity_declared(name: str, *_: object) -> None:
        raise FileFormatError(f"{os.fspath(path)!r} declares the XML entity {name!r}; GraphML files with entity "
                              "declarations are refused (entity expansion is unsafe)")

    def root_reached(*_: object) -> None:
        raise _RootReached

    parser = xml.parsers.expat.ParserCreate()
    parser.EntityDeclHandler = entity_declared
    parser.StartElementHandler = root_reached
    with open(path, "rb") as file:
        try:
            while chunk := file.read(1 << 16):
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
        except _RootReached:
            return
        except xml.parsers.expat.ExpatError as error:
            raise FileFormatError(f"{os.fspath(path)!r} is not well-formed XML: {error}") from None


def _with_text_tuples(G: nx.DiGraph) -> nx.DiGraph:
    """A copy of ``G`` (new attribute dicts) whose tuple attributes are comma-separated text."""
    H = G.copy()
    for data in H.nodes.values():
        data[_POSITION] = _format_tuple(data[_POSITION])
    H.graph[_SAMPLES] = _format_tuple(H.graph[_SAMPLES])
    return H


def _format_tuple(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


#: an attribute the file does not hold
_MISSING = object()


def _parsed_tuple(path: str | os.PathLike, what: str, text: object) -> tuple[int, ...]:
    """The ints of comma-separated ``text``; an empty tuple is written as an empty element, read as ``"None"``."""
    if text in (None, "", "None"):
        return ()
    if not isinstance(text, str):
        missing = "is missing" if text is _MISSING else f"is {text!r}, not comma-separated ints"
        raise FileFormatError(f"{os.fspath(path)!r}: {what} {missing}; expected {_EXPECTED}")
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FileFormatError(f"{os.fspath(path)!r}: {what} is {text!r}, not comma-separated ints") from None
