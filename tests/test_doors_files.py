"""Every door of graph building, files and analysis holds: bad arguments raise graphlrp's own
errors naming the argument, the caller's objects are bit-identical afterwards, unsafe files are
refused, and no work is sized by a number the caller made up (an id, a ``k``).

Doors: ``graph_from_edges`` / ``Graph.from_edges``, ``from_networkx``, ``from_neat``, the GraphML
and JSON readers and writers, ``to_networkx`` / ``explanation_to_networkx`` and the analysis
functions.
"""
from __future__ import annotations

import itertools
import json
import math
import pickle
import re
from pathlib import Path

import neat
import networkx as nx
import numpy as np
import pytest
import torch

import graphlrp
from graphlrp import analysis, export, memory, rules
from graphlrp.errors import (
    ArgumentTypeError,
    FileFormatError,
    GraphLRPError,
    GraphTooLargeError,
    IndexOutOfRangeError,
    InputError,
    NumericRangeError,
)
from test_neat import CONFIG, make_genome


def snapshot(*objects) -> bytes:
    """Every bit of ``objects`` (arrays, tensors, lists, networkx graphs, NEAT genomes)."""
    def plain(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", value.dtype, value.requires_grad, value.detach().clone().numpy().tobytes())
        if isinstance(value, np.ndarray):
            return ("array", value.dtype.str, value.shape, value.strides, value.tobytes())
        if isinstance(value, nx.Graph):
            return (type(value), list(value.nodes(data=True)), list(value.edges(data=True)), value.graph)
        return value

    return pickle.dumps([plain(o) for o in objects])


def raises_leaving_intact(error, match, call, *objects):
    """``call()`` raises ``error`` matching ``match`` and leaves ``objects`` bit-identical."""
    before = snapshot(*objects)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(*objects) == before


# -- from_edges ----------------------------------------------------------------------------------
def dense_reference(src, dst, weight, n_inputs: int, x: torch.Tensor) -> torch.Tensor:
    """Output of the single layer ``out = W x`` of the tiny graphs below (identity activation)."""
    n = max(max(src), max(dst)) + 1
    W = torch.zeros(n, n, dtype=torch.float64)
    for s, d, w in zip(src, dst, weight):
        W[d, s] += w
    return x @ W[n_inputs:, :n_inputs].T


@pytest.mark.parametrize("ids", [[2**40], [2**70], np.array([2**63 + 5], dtype=np.uint64)])
def test_a_huge_node_id_is_refused_by_name_before_anything_is_allocated(ids):
    with pytest.raises(GraphTooLargeError, match=r"dst holds the node id [\d,]+.*[Rr]elabel"):
        graphlrp.Graph.from_edges([0], ids, [1.0])
    with pytest.raises(GraphTooLargeError, match="node id 1,099,511,627,777"):
        graphlrp.graph_from_edges([2**40], [2**40 + 1], [1.0], inputs=[2**40])


def test_node_count_within_the_limit_is_held_to_the_memory_budget(monkeypatch):
    src, dst, weight = [0, 1], [10_000, 10_000], [1.0, 2.0]
    graph = graphlrp.graph_from_edges(src, dst, weight)  # ids 2 .. 9999 are isolated inputs
    assert graph.num_nodes == 10_001
    monkeypatch.setattr(memory, "default_budget", lambda device=None: 100_000)
    with pytest.raises(GraphTooLargeError, match="10,001 nodes.*above the budget"):
        graphlrp.graph_from_edges(src, dst, weight)


@pytest.mark.parametrize("argument", ["src", "dst", "weight"])
def test_none_for_an_edge_list_is_a_type_error_naming_it(argument):
    arguments = {"src": [0, 1], "dst": [2, 2], "weight": [1.0, 2.0], argument: None}
    with pytest.raises(ArgumentTypeError, match=f"^{argument} must be a sequence"):
        graphlrp.Graph.from_edges(**arguments)


@pytest.mark.parametrize("arguments, error, message", [
    (dict(weight=[1.0, float("nan")]), InputError, r"weight holds NaN or inf: \[nan\] at positions \[1\]"),
    (dict(weight=np.array([float("-inf"), 1.0])), InputError, r"weight holds NaN or inf: \[-inf\] at positions \[0\]"),
    (dict(bias=[0.0, 0.0, float("inf")]), InputError, "bias holds NaN or inf"),
    (dict(src=[0, -3]), InputError, "src holds the negative node id -3"),
    (dict(dst=torch.tensor([2, -1])), InputError, "dst holds the negative node id -1"),
    (dict(weight=[1.0]), InputError, "one entry per edge, got lengths 2, 2 and 1"),
    (dict(src=[0, 1, 1]), InputError, "one entry per edge, got lengths 3, 2 and 2"),
    (dict(src=[0.0, 1.0]), ArgumentTypeError, "src must hold integer node ids, got dtype float64"),
    (dict(dst=["2", "2"]), ArgumentTypeError, "dst must hold integer node ids"),
    (dict(src=[True, False]), ArgumentTypeError, "src must hold integer node ids, got dtype bool"),
    (dict(src=[0, None]), ArgumentTypeError, "src must hold integer node ids, got None"),
    (dict(src=[[0], [1, 2]]), InputError, "src must be a one-dimensional sequence"),
    (dict(weight=["1.0", "2.0"]), ArgumentTypeError, "weight must hold real numbers"),
    (dict(weight=[1.0, None]), ArgumentTypeError, r"weight must hold real numbers, got None .* at position 1"),
    (dict(weight=[1, 10**400]), NumericRangeError, r"weight\[1\] = 1000.*\(401 digits\) is too large"),
    (dict(weight=[1e39, 1.0], dtype=torch.float32), NumericRangeError,
     r"weight holds values beyond the range of torch.float32 .*\[1e\+39\] at positions \[0\]"),
    (dict(dtype=torch.int64), InputError, "dtype must be a floating dtype"),
    (dict(dtype="float32"), ArgumentTypeError, "dtype must be a torch.dtype"),
    (dict(activation=None), ArgumentTypeError, "activation must be a name, an Activation or a sequence"),
    (dict(activation=["identity", "identity", 3]), ArgumentTypeError, r"activation\[2\] must be a name"),
    (dict(names=["a", "b", "a"]), InputError, r"names must be distinct.*\['a'\]"),
    (dict(names=[["a"], ["b"], ["c"]]), ArgumentTypeError, "names must be hashable"),
    (dict(block_kind="csr"), InputError, "unknown block_kind 'csr'"),
])
def test_bad_edge_arguments_raise_graphlrp_errors_naming_the_argument(arguments, error, message):
    given = {"src": [0, 1], "dst": [2, 2], "weight": [1.0, 2.0], **arguments}
    raises_leaving_intact(error, message, lambda: graphlrp.graph_from_edges(**given), *given.values())


def test_edge_arrays_of_any_layout_give_the_graph_of_plain_lists_and_stay_untouched():
    src, dst, weight = [0, 1, 2, 0], [3, 3, 4, 4], [0.5, -1.25, 2.0, 3.0]
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = dense_reference(src, dst, weight, 3, x)
    variants = [
        (src, dst, weight),
        (np.array(src[::-1])[::-1], np.array(dst, dtype=np.uint8), np.array(weight[::-1], dtype=">f8")[::-1]),
        (torch.tensor(src), torch.tensor(dst, dtype=torch.int32), torch.tensor(weight, dtype=torch.float64)),
        (np.array(src, dtype=object), dst, np.array(weight, dtype=object)),
    ]
    for variant in variants:
        before = snapshot(*variant)
        graph = graphlrp.graph_from_edges(*variant, dtype=torch.float64)
        assert snapshot(*variant) == before
        torch.testing.assert_close(graph(x), expected, rtol=1e-15, atol=0)


def test_weights_that_require_grad_are_read_not_kept():
    weight = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64, requires_grad=True)
    before = snapshot(weight)
    graph = graphlrp.graph_from_edges([0, 1, 2], [3, 3, 3], weight)
    assert snapshot(weight) == before and weight.grad is None
    assert not any(t.requires_grad for t in graph.edges())
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    relevance = graphlrp.explain(graph, x.detach(), target=0, rule=rules.Epsilon(0.0)).input_relevance
    out = (x * weight.detach()).sum(1)  # LRP-0 of a linear output is gradient × input
    (gradient,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(relevance, gradient * x.detach(), rtol=1e-14, atol=1e-15)


# -- from_networkx -------------------------------------------------------------------------------
def small_network() -> nx.DiGraph:
    G = nx.DiGraph()
    G.add_node("x1"), G.add_node("x2")
    G.add_node("h", bias=0.25, activation="relu")
    G.add_node("out", bias=-0.5)
    G.add_weighted_edges_from([("x1", "h", 1.5), ("x2", "h", -0.75), ("h", "out", 2.0), ("x1", "out", 0.5)])
    G.graph.update(inputs=["x1", "x2"], outputs=["out"])
    return G


def test_from_networkx_computes_the_network_and_leaves_the_graph_intact():
    G = small_network()
    before = snapshot(G)
    graph = graphlrp.from_networkx(G, dtype=torch.float64)
    assert snapshot(G) == before
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h = torch.relu(1.5 * x[:, 0] - 0.75 * x[:, 1] + 0.25)
    torch.testing.assert_close(graph(x)[:, 0], 2.0 * h + 0.5 * x[:, 0] - 0.5, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("flaw, error, message", [
    ("huge_int_weight", NumericRangeError, r"edge 'h' -> 'out' has 'weight' = 1000.*\(401 digits\), too large"),
    ("huge_float32_weight", NumericRangeError, "edge 'h' -> 'out' has 'weight' = 1e\\+300, beyond the range of "
                                               "torch.float32"),
    ("string_weight", ArgumentTypeError, r"edge 'h' -> 'out' has 'weight' = 'heavy' \(str\); it must be a real"),
    ("none_weight", ArgumentTypeError, "edge 'h' -> 'out' has 'weight' = None"),
    ("complex_weight", ArgumentTypeError, "edge 'h' -> 'out' has 'weight' = \\(1\\+2j\\)"),
    ("nan_weight", InputError, "edge 'h' -> 'out' has 'weight' = nan; it must be finite"),
    ("missing_weight", InputError, "edge 'h' -> 'out' has no 'weight' attribute"),
    ("huge_int_bias", NumericRangeError, "node 'out' has 'bias' = -1000"),
    ("string_bias", ArgumentTypeError, "node 'out' has 'bias' = 'x'"),
    ("number_activation", ArgumentTypeError, "node 'h' has 'activation' = 3 \\(int\\)"),
    ("unknown_activation", InputError, "node 'h' has the unknown activation 'swish-ish'"),
    ("graph_inputs_junk", ArgumentTypeError, r"G.graph\['inputs'\] must be a sequence of node labels, got 5"),
    ("unhashable_output", ArgumentTypeError, r"outputs holds \['out'\], which cannot be a node label"),
    ("ghost_input", InputError, r"inputs names nodes that are not in the graph: \['ghost'\]"),
    ("cycle", graphlrp.CycleError, "'h' -> 'out' -> 'h'|'out' -> 'h' -> 'out'"),
    ("int_dtype", InputError, "dtype must be a floating dtype"),
])
def test_bad_networkx_graphs_raise_errors_naming_the_edge_or_node_and_stay_untouched(flaw, error, message):
    G = small_network()
    kwargs = {"dtype": torch.float32 if flaw == "huge_float32_weight" else torch.float64}
    edges, nodes = G.edges, G.nodes
    changes = {
        "huge_int_weight": lambda: edges["h", "out"].update(weight=10**400),
        "huge_float32_weight": lambda: edges["h", "out"].update(weight=1e300),
        "string_weight": lambda: edges["h", "out"].update(weight="heavy"),
        "none_weight": lambda: edges["h", "out"].update(weight=None),
        "complex_weight": lambda: edges["h", "out"].update(weight=1 + 2j),
        "nan_weight": lambda: edges["h", "out"].update(weight=float("nan")),
        "missing_weight": lambda: edges["h", "out"].pop("weight"),
        "huge_int_bias": lambda: nodes["out"].update(bias=-(10**400)),
        "string_bias": lambda: nodes["out"].update(bias="x"),
        "number_activation": lambda: nodes["h"].update(activation=3),
        "unknown_activation": lambda: nodes["h"].update(activation="swish-ish"),
        "graph_inputs_junk": lambda: G.graph.update(inputs=5),
        "unhashable_output": lambda: kwargs.update(outputs=[["out"]]),
        "ghost_input": lambda: kwargs.update(inputs=["x1", "ghost"]),
        "cycle": lambda: G.add_edge("out", "h", weight=1.0),
        "int_dtype": lambda: kwargs.update(dtype=torch.int32),
    }
    changes[flaw]()
    raises_leaving_intact(error, message, lambda: graphlrp.from_networkx(G, **kwargs), G)


@pytest.mark.parametrize("G", [None, nx.Graph([(0, 1)]), [(0, 1)]], ids=["none", "undirected", "list"])
def test_from_networkx_refuses_what_is_not_a_directed_graph(G):
    with pytest.raises(ArgumentTypeError, match="G must be a networkx.DiGraph"):
        graphlrp.from_networkx(G)


# -- from_neat -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("neat") / "config.ini"
    path.write_text(CONFIG)
    return neat.Config(neat.DefaultGenome, neat.DefaultReproduction, neat.DefaultSpeciesSet,
                       neat.DefaultStagnation, str(path))


def two_layer_genome(config):
    """Inputs -1, -2; hidden 2 (tanh); outputs 0 (relu) and 1 (identity, needs no hidden node)."""
    return make_genome(config, {0: ("relu", 0.1, 1.5), 1: ("identity", -0.2, 1.0), 2: ("tanh", 0.3, 0.5)},
                       [(-1, 2, 0.7, True), (-2, 2, -1.1, True), (2, 0, 1.3, True), (-1, 0, 0.4, True),
                        (-2, 1, 0.9, True)])


def test_from_neat_computes_what_neat_computes_and_leaves_genome_and_config_intact(config):
    genome = two_layer_genome(config)
    before = pickle.dumps(genome), pickle.dumps(config.genome_config.__dict__)
    graph = graphlrp.from_neat(genome, config)
    assert (pickle.dumps(genome), pickle.dumps(config.genome_config.__dict__)) == before
    network = neat.nn.FeedForwardNetwork.create(genome, config)
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = torch.tensor([network.activate(row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(graph(x), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("flaw, error, message", [
    ("nan_weight", InputError, "NEAT connection -1 -> 2 has 'weight' = nan"),
    ("nan_bias", InputError, "NEAT node 2 has 'bias' = nan"),
    ("inf_response", InputError, "NEAT node 0 has 'response' = inf"),
    ("overflow", NumericRangeError, r"NEAT connection 2 -> 0 has weight 1e\+200 × response 1e\+200 = inf"),
    ("unknown_activation", InputError, "NEAT node 2 uses the activation 'swish-ish'"),
    ("unknown_aggregation", InputError, "NEAT node 0 uses the aggregation 'median-ish'"),
    ("missing_node", InputError, "lead to node 2, which is not among genome.nodes"),
    ("none_genome", ArgumentTypeError, "genome must be a neat-python genome"),
    ("none_config", ArgumentTypeError, "config must be a neat.Config"),
])
def test_bad_neat_genomes_raise_errors_naming_the_node_or_connection(config, flaw, error, message):
    genome = two_layer_genome(config)
    given_config = config
    if flaw == "nan_weight":
        genome.connections[-1, 2].weight = float("nan")
    elif flaw == "nan_bias":
        genome.nodes[2].bias = float("nan")
    elif flaw == "inf_response":
        genome.nodes[0].response = float("inf")
    elif flaw == "overflow":
        genome.connections[2, 0].weight, genome.nodes[0].response = 1e200, 1e200
    elif flaw == "unknown_activation":
        genome.nodes[2].activation = "swish-ish"
    elif flaw == "unknown_aggregation":
        genome.nodes[0].aggregation = "median-ish"
    elif flaw == "missing_node":
        del genome.nodes[2]
    elif flaw == "none_config":
        given_config = None
    given_genome = None if flaw == "none_genome" else genome
    before = pickle.dumps(genome)
    with pytest.raises(error, match=message):
        graphlrp.from_neat(given_genome, given_config)
    assert pickle.dumps(genome) == before


def test_an_unknown_activation_on_a_node_neat_never_evaluates_is_no_error(config):
    genome = two_layer_genome(config)
    genome.nodes[7] = neat.DefaultGenome.create_node(config.genome_config, 7)
    genome.nodes[7].activation = "swish-ish"  # no connection reaches an output through node 7
    network = neat.nn.FeedForwardNetwork.create(genome, config)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    expected = torch.tensor([network.activate(row) for row in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(graphlrp.from_neat(genome, config)(x), expected, rtol=1e-14, atol=1e-15)


# -- files ---------------------------------------------------------------------------------------
def explanation_graph() -> nx.DiGraph:
    graph = graphlrp.graph_from_edges([0, 1, 2, 0], [3, 3, 4, 4], [0.5, -1.25, 2.0, 3.0], activation="relu",
                                      dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]], dtype=torch.float64)
    return graphlrp.explain(graph, x, target=0).to_networkx(0)


ENTITY_BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">]>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="directed">
<node id="0"><data key="d0">&lol6;</data></node></graph></graphml>"""


def graphml_with_entity(declaration: str, use: str) -> str:
    """A well-formed graphlrp GraphML file whose first position is given by an entity."""
    text = export_text("graphml")
    head, rest = text.split("<graphml", 1)
    return f'{head}<!DOCTYPE graphml [{declaration}]>\n<graphml{rest.replace(">0<", f">{use}<", 1)}'


def export_text(kind: str) -> str:
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / f"g.{kind}"
    (export.write_graphml if kind == "graphml" else export.write_json)(explanation_graph(), path)
    return path.read_text()


def first_position_as(text: str, value: str) -> str:
    """GraphML ``text`` with the first node's ``position`` replaced by ``value``."""
    key = re.search(r'<key id="(\w+)" for="node" attr.name="position"', text).group(1)
    return re.sub(f'<data key="{key}">[^<]*</data>', f'<data key="{key}">{value}</data>', text, count=1)


def json_without(key: str) -> str:
    data = json.loads(export_text("json"))
    del data[key]
    return json.dumps(data)


def json_with(change) -> str:
    data = json.loads(export_text("json"))
    change(data)
    return json.dumps(data)


def ordinary_graphml() -> str:
    import io

    buffer = io.BytesIO()
    nx.write_graphml(nx.path_graph(3, create_using=nx.DiGraph), buffer)
    return buffer.getvalue().decode()


BAD_FILES = {
    "graphml": {
        "networkx_ordinary": (ordinary_graphml, "node 0 attribute 'position' is missing"),
        "malformed": (lambda: "<graphml><graph", "not well-formed XML|not a GraphML file"),
        "truncated": (lambda: export_text("graphml")[:200], "not well-formed XML|not a GraphML file"),
        "binary": (lambda: bytes(range(256)).decode("latin-1"), "not well-formed XML|not a GraphML file"),
        "empty": (lambda: "", "not well-formed XML|not a GraphML file"),
        "deep": (lambda: "<graphml>" + "<a>" * 100_000 + "</a>" * 100_000 + "</graphml>", "not a GraphML file"),
        "json": (lambda: export_text("json"), "not well-formed XML"),
        "undirected": (lambda: export_text("graphml").replace('edgedefault="directed"', 'edgedefault="undirected"'),
                       "undirected graph or a multigraph"),
        "bad_position": (lambda: first_position_as(export_text("graphml"), "a,b"), "'position' is 'a,b', not comma"),
    },
    "json": {
        "networkx_ordinary": (lambda: json.dumps(nx.node_link_data(nx.path_graph(3, create_using=nx.DiGraph),
                                                                   edges="edges")),
                              "node 0 has no 'position' list of ints"),
        "malformed": (lambda: '{"nodes": [', "not a JSON file of write_json"),
        "list": (lambda: "[1, 2, 3]", "it holds a JSON list"),
        "missing_nodes": (lambda: json_without("nodes"), "'nodes' is missing"),
        "missing_edges": (lambda: json_without("edges"), "'edges' is missing"),
        "missing_graph": (lambda: json_without("graph"), "'graph' is missing"),
        "missing_samples": (lambda: json_with(lambda d: d["graph"].pop("samples")), "no 'samples' list of ints"),
        "nodes_not_a_list": (lambda: json_with(lambda d: d.update(nodes={"a": 1})), "'nodes' is a dict"),
        "position_as_text": (lambda: json_with(lambda d: d["nodes"][0].update(position="1,2")),
                             "no 'position' list of ints"),
        "undirected": (lambda: json_with(lambda d: d.update(directed=False)), "undirected graph or a multigraph"),
        "deep": (lambda: "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        "binary": (lambda: None, "not a JSON file of write_json"),
        "empty": (lambda: "", "not a JSON file of write_json"),
        "graphml": (lambda: export_text("graphml"), "not a JSON file of write_json"),
    },
}


@pytest.mark.parametrize("kind, case", [(k, c) for k, cases in BAD_FILES.items() for c in cases])
def test_a_file_that_is_not_an_explanation_graph_is_a_file_format_error_naming_it(tmp_path, kind, case):
    make, message = BAD_FILES[kind][case]
    path = tmp_path / f"{case}.{kind}"
    content = make()
    if content is None:
        path.write_bytes(bytes(range(256)) * 4)
    else:
        path.write_text(content, encoding="latin-1" if case == "binary" else "utf-8")
    read = export.read_graphml if kind == "graphml" else export.read_json
    before = path.read_bytes()
    with pytest.raises(FileFormatError, match=message) as caught:
        read(path)
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("declaration, use", [
    ('<!ENTITY x "0">', "&x;"),  # harmless in size, yet refused: no entity is ever expanded
    ('<!ENTITY x SYSTEM "file:///etc/hostname">', "&x;"),
])
def test_graphml_entity_declarations_are_refused(tmp_path, declaration, use):
    path = tmp_path / "entity.graphml"
    path.write_text(graphml_with_entity(declaration, use))
    with pytest.raises(FileFormatError, match="declares the XML entity 'x'.*refused"):
        export.read_graphml(path)
    bomb = tmp_path / "bomb.graphml"
    bomb.write_text(ENTITY_BOMB)
    with pytest.raises(FileFormatError, match="declares the XML entity 'lol'"):
        export.read_graphml(bomb)


class _Trap:
    """Unpickling this runs ``Path.touch`` on the marker: a reader that unpickles would create it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("read", [export.read_json, export.read_graphml])
def test_readers_never_unpickle(tmp_path, read):
    marker = tmp_path / "unpickled"
    path = tmp_path / "graph.pickle"
    path.write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(FileFormatError):
        read(path)
    assert not marker.exists()


@pytest.mark.parametrize("write", [export.write_graphml, export.write_json])
def test_writers_refuse_foreign_graphs_and_leave_graph_and_file_intact(tmp_path, write):
    path = tmp_path / "graph.out"
    G = explanation_graph()
    write(G, path)
    written = path.read_bytes()
    with pytest.raises(ArgumentTypeError, match="G must be a networkx.DiGraph"):
        write(None, path)
    ordinary = nx.path_graph(3, create_using=nx.DiGraph)
    raises_leaving_intact(InputError, "node 0 has no 'position' tuple of ints", lambda: write(ordinary, path), ordinary)
    assert path.read_bytes() == written
    before = snapshot(G)
    write(G, path)
    assert snapshot(G) == before and path.read_bytes() == written


def test_graphml_refuses_attributes_it_cannot_hold_without_touching_the_file(tmp_path):
    path = tmp_path / "graph.graphml"
    G = explanation_graph()
    export.write_graphml(G, path)
    written = path.read_bytes()
    G.graph["extra"] = (1.5, "x")
    raises_leaving_intact(InputError, "cannot be written as GraphML", lambda: export.write_graphml(G, path), G)
    assert path.read_bytes() == written


# -- to_networkx ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explanation():
    graph = graphlrp.graph_from_edges(
        [0, 1, 2, 0, 3, 4, 3], [3, 3, 4, 4, 5, 5, 6], [0.5, -1.25, 2.0, 3.0, 1.5, -0.5, 0.75],
        bias=[0, 0, 0, 0.1, -0.2, 0.05, 0.0], activation="relu", dtype=torch.float64,
    )
    x = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    return graphlrp.explain(graph, x, target=0)


@pytest.mark.parametrize("aggregate", ["sum", "mean", "mean_abs"])
def test_an_empty_sample_selection_is_refused(explanation, aggregate):
    with pytest.raises(InputError, match="sample selects no samples"):
        explanation.to_networkx([], aggregate=aggregate)
    with pytest.raises(InputError, match="sample selects no samples"):
        analysis.level_flow(explanation, [])
    with pytest.raises(InputError, match="sample selects no samples"):
        analysis.rank_neurons(explanation, 1, sample=[])


def graph_nodes(explanation) -> int:
    return explanation.graph.num_nodes


def test_negative_samples_fold_like_python_indexing(explanation):
    batch = len(explanation.node_relevance)
    for sample in (-1, -batch, [-1, 0], torch.tensor([-2, 1]), np.array([1, -1])):
        rows = [int(s) % batch for s in np.atleast_1d(np.asarray(sample))]
        G = explanation.to_networkx(sample, aggregate="mean")
        assert G.graph["samples"] == tuple(rows)
        expected = explanation.node_relevance[rows].mean(0)
        for node, data in G.nodes(data=True):
            assert data["relevance"] == pytest.approx(float(expected[node]), rel=1e-14, abs=1e-15)
    for sample, shape in ((torch.tensor([1]), (1, graph_nodes(explanation))), (torch.tensor(1), (graph_nodes(explanation),)),
                          (np.int64(-1), (graph_nodes(explanation),))):
        assert tuple(explanation.bias_relevance(sample).shape) == shape
    for sample in (batch, -batch - 1, [0, batch]):
        with pytest.raises(IndexOutOfRangeError, match=f"out of range for a batch of {batch}"):
            explanation.to_networkx(sample)


@pytest.mark.parametrize("options, error, message", [
    (dict(sample=0.0), ArgumentTypeError, "samples must be ints|sample must be"),
    (dict(sample="0"), ArgumentTypeError, "sample must be an int, a sequence of ints or None"),
    (dict(aggregate=None), InputError, "unknown aggregate None"),
    (dict(top_k="3"), ArgumentTypeError, "top_k must be an int >= 0"),
    (dict(top_k=2.5), ArgumentTypeError, "top_k must be an int >= 0"),
    (dict(top_k=-1), InputError, "top_k must be an int >= 0"),
    (dict(threshold=float("nan")), InputError, "threshold must be a number, got NaN"),
    (dict(threshold="x"), ArgumentTypeError, "threshold must be a real number"),
    (dict(mass=float("nan")), InputError, r"mass must be a fraction in \(0, 1\]"),
    (dict(mass="0.5"), ArgumentTypeError, r"mass must be a fraction in \(0, 1\]"),
    (dict(keep_all_nodes=None), ArgumentTypeError, "keep_all_nodes must be True or False"),
])
def test_to_networkx_arguments_are_checked(explanation, options, error, message):
    with pytest.raises(error, match=message):
        export.explanation_to_networkx(explanation, **options)


def test_export_functions_refuse_what_is_not_an_explanation():
    for call in (lambda: export.explanation_to_networkx(None), lambda: export.bias_relevance("x"),
                 lambda: analysis.top_paths(None), lambda: analysis.level_flow(42),
                 lambda: analysis.contrast(None, None)):
        with pytest.raises(ArgumentTypeError, match="must be a graphlrp.Explanation"):
            call()


# -- analysis ------------------------------------------------------------------------------------
def layered_explanation(widths: list[int], seed: int = 0) -> graphlrp.Explanation:
    """A fully connected layered network (identity activations, positive weights and inputs)."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + widths)
    src, dst = [], []
    for a, b in zip(range(len(widths) - 1), range(1, len(widths))):
        pairs = itertools.product(range(offsets[a], offsets[a + 1]), range(offsets[b], offsets[b + 1]))
        for s, d in pairs:
            src.append(s), dst.append(d)
    weight = rng.uniform(0.2, 1.5, len(src))
    graph = graphlrp.graph_from_edges(src, dst, weight, dtype=torch.float64)
    x = torch.from_numpy(rng.uniform(0.5, 2.0, (2, widths[0])))
    return graphlrp.explain(graph, x, target=0, rule=rules.Epsilon(0.0))


def enumerated_path_scores(explanation: graphlrp.Explanation, score: str) -> list[float]:
    """Every input-to-output path's score, by walking each path of the networkx graph."""
    graph = explanation.graph
    src, dst, _ = (t.tolist() for t in graph.edges())
    messages = explanation.edge_relevance(0).tolist()
    relevance = explanation.node_relevance[0].tolist()
    message = {(s, d): m for s, d, m in zip(src, dst, messages)}
    G = nx.DiGraph(list(message))
    goal = int(graph.outputs[0])
    scores = []
    for start in range(graph.levels[0].size):
        for path in nx.all_simple_paths(G, start, goal):
            edges = list(zip(path[:-1], path[1:]))
            if score == "product":
                scores.append(relevance[goal] * math.prod(message[e] / relevance[e[1]] for e in edges))
            else:
                scores.append(sum(abs(message[e]) for e in edges))
    return sorted(scores, key=abs, reverse=True)


@pytest.mark.parametrize("score", ["product", "sum"])
def test_top_paths_with_a_huge_k_does_the_work_of_the_paths_that_exist(monkeypatch, score):
    explanation = layered_explanation([4, 3, 4, 1])  # 4 · 3 · 4 = 48 paths to the output
    expected = enumerated_path_scores(explanation, score)
    assert len(expected) == 48
    monkeypatch.setattr(memory, "default_budget", lambda device=None: 1 << 20)  # 10⁷ paths per node would need ~10 GB
    paths = analysis.top_paths(explanation, 0, target=0, k=10**7, score=score)
    assert len(paths) == 48
    np.testing.assert_allclose([abs(p.score) for p in paths], [abs(s) for s in expected], rtol=1e-12)
    assert [p.nodes for p in paths] == [p.nodes for p in analysis.top_paths(explanation, 0, 0, 48, score)]


def test_top_paths_beyond_the_memory_budget_is_refused(monkeypatch):
    explanation = layered_explanation([6, 6, 6, 6, 1])  # 6⁴ = 1296 paths
    monkeypatch.setattr(memory, "default_budget", lambda device=None: 1 << 16)
    with pytest.raises(GraphTooLargeError, match="the 1,296 best paths from each of 25 nodes"):
        analysis.top_paths(explanation, target=0, k=10**9)
    assert len(analysis.top_paths(explanation, target=0, k=5)) == 5


@pytest.mark.parametrize("call, error, message", [
    (lambda e: analysis.top_paths(e, k=True), ArgumentTypeError, "k must be an int >= 1"),
    (lambda e: analysis.top_paths(e, k=0), InputError, "k must be an int >= 1"),
    (lambda e: analysis.top_paths(e, score=None), InputError, "unknown score None"),
    (lambda e: analysis.top_paths(e, sample=0.0), ArgumentTypeError, "sample must be one int"),
    (lambda e: analysis.top_paths(e, target="0"), ArgumentTypeError, "target must be an int"),
    (lambda e: analysis.top_paths(e, target=-3), IndexOutOfRangeError, "target -3 is not an index"),
    (lambda e: analysis.relevant_circuit(e, fraction=float("nan")), InputError, r"fraction must be a fraction"),
    (lambda e: analysis.relevant_circuit(e, fraction="0.5"), ArgumentTypeError, r"fraction must be a fraction"),
    (lambda e: analysis.relevant_circuit(e, fraction=None), ArgumentTypeError, r"fraction must be a fraction"),
    (lambda e: analysis.rank_neurons(e, 1.0), ArgumentTypeError, "level must be a level index"),
    (lambda e: analysis.rank_neurons(e, 9), IndexOutOfRangeError, "level 9 is not one of"),
    (lambda e: analysis.rank_neurons(e, 1, k="3"), ArgumentTypeError, "k must be an int >= 1"),
    (lambda e: analysis.rank_neurons(e, 1, absolute=None), ArgumentTypeError, "absolute must be True or False"),
    (lambda e: analysis.contrast(e, e, k=10**0 - 1), InputError, "k must be an int >= 1"),
    (lambda e: analysis.prune(e.graph, torch.tensor([0.0])), ArgumentTypeError, "keep must hold int edge positions"),
    (lambda e: analysis.prune(e.graph, torch.tensor([99])), IndexOutOfRangeError, r"keep holds the edge positions \[99\]"),
    (lambda e: analysis.prune(e.graph, torch.ones(3, dtype=torch.bool)), InputError, "mask of 3 entries"),
    (lambda e: analysis.prune(e.graph, "all"), ArgumentTypeError, "keep must be edge positions"),
    (lambda e: analysis.prune(None, [0]), ArgumentTypeError, "graph must be a graphlrp.Graph"),
    (lambda e: analysis.mean_edge_relevance(e.graph, [[1.0, 2.0, 3.0]], 0, progress=False), ArgumentTypeError,
     "inputs must be a torch.Tensor"),
    (lambda e: analysis.mean_edge_relevance(e.graph, torch.ones(2, 3, dtype=torch.float64), torch.tensor([0.5]),
                                            progress=False), ArgumentTypeError, "targets must hold ints"),
    (lambda e: analysis.mean_edge_relevance(e.graph, torch.ones(2, 3, dtype=torch.float64), 0.5, progress=False),
     ArgumentTypeError, "targets must be an int"),
    (lambda e: analysis.mean_edge_relevance(e.graph, torch.ones(2, 3, dtype=torch.float64), None, progress=False),
     ArgumentTypeError, "targets must be an int"),
    (lambda e: analysis.mean_edge_relevance(e.graph, torch.ones(2, 3, dtype=torch.float64), 0, batch_size=2.0,
                                            progress=False), ArgumentTypeError, "batch_size must be an int >= 1"),
])
def test_analysis_arguments_are_checked_up_front(explanation, call, error, message):
    before = snapshot(explanation.node_relevance)
    with pytest.raises(error, match=message):
        call(explanation)
    assert snapshot(explanation.node_relevance) == before


def test_negative_levels_targets_and_edge_positions_count_from_the_end(explanation):
    graph = explanation.graph
    last = graph.levels[-1]
    assert [n.node for n in analysis.rank_neurons(explanation, -1, k=99)] == \
        [n.node for n in analysis.rank_neurons(explanation, last.index, k=99)]
    outputs = len(graph.outputs)
    assert [p.nodes for p in analysis.top_paths(explanation, target=-1)] == \
        [p.nodes for p in analysis.top_paths(explanation, target=outputs - 1)]
    x = explanation._trace.activations[0]
    by_position = analysis.prune(graph, [0, -1])
    by_mask = analysis.prune(graph, torch.tensor([i in (0, graph.num_edges - 1) for i in range(graph.num_edges)]))
    torch.testing.assert_close(by_position(x), by_mask(x), rtol=0, atol=0)


def test_every_error_here_is_a_graphlrp_error_and_the_matching_builtin():
    for error, builtin in ((InputError, ValueError), (ArgumentTypeError, TypeError),
                           (IndexOutOfRangeError, IndexError), (NumericRangeError, OverflowError),
                           (FileFormatError, ValueError), (GraphTooLargeError, MemoryError)):
        assert issubclass(error, GraphLRPError) and issubclass(error, builtin)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_to_networkx_of_half_precision_graphs_holds_their_values_exactly(dtype):
    graph = graphlrp.graph_from_edges([0, 1, 2, 0], [3, 3, 4, 4], [0.5, -1.25, 2.0, 3.0], dtype=dtype)
    x = torch.tensor([[1.0, 2.0, 0.5]], dtype=dtype)
    explanation = graphlrp.explain(graph, x, target=0)
    G = explanation.to_networkx(0)
    for node, data in G.nodes(data=True):
        assert data["relevance"] == float(explanation.node_relevance[0, node])
    messages = explanation.edge_relevance(0)
    src, dst, weight = graph.edges()
    for s, d, w, m in zip(src.tolist(), dst.tolist(), weight.tolist(), messages.tolist()):
        assert G.edges[s, d]["weight"] == w and G.edges[s, d]["relevance"] == m
