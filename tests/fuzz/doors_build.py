"""Doors that build a graph: ``lower`` on torch modules, ``Graph.from_edges`` / ``graph_from_edges``,
``from_networkx`` and ``from_neat``."""
from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
from hypothesis import strategies as st

import graphlrp
from graphlrp import rules

from .core import Door, require, require_close, require_finite, tolerance
from .models import INPUT_KINDS, ModelSpec, as_is, build_model, canonical_spec, example_input, model_specs
from .networks import DagSpec, dag_specs
from .reference import gradient_times_input

NAN, INF = float("nan"), float("inf")


# -- lower --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LowerCase:
    model: ModelSpec
    input_kind: str
    size: int
    seed: int
    options: tuple[tuple[str, Any], ...]


LOWER_OPTIONS = {
    "block_kind": st.sampled_from(["auto", "dense", "sparse", "edges", "csr", None]),
    "max_pool": st.sampled_from(["winner", "proportional", "max"]),
    "check": st.sampled_from([True, False]),
    "max_edges": st.sampled_from([None, 0, 1, 10**6, -1, "10"]),
}
#: example inputs that lower must accept (and compute the model on)
VALID_INPUTS = ("ok", "requires_grad", "noncontiguous")


class LowerDoor(Door):
    """``graphlrp.lower(model, example_input, ...)`` on Sequential and traced models in every written form."""

    name = "lower"
    owner = "graphlrp/frontends/torch_modules.py, graphlrp/frontends/fx.py"

    def cases(self):
        options = st.lists(st.sampled_from(sorted(LOWER_OPTIONS)), unique=True, max_size=2).flatmap(
            lambda names: st.tuples(*[st.tuples(st.just(n), LOWER_OPTIONS[n]) for n in names]))
        return st.builds(LowerCase, model=model_specs(), input_kind=st.sampled_from(INPUT_KINDS),
                         size=st.integers(1, 3), seed=st.integers(0, 2**16), options=options)

    def prepare(self, case: LowerCase):
        model = build_model(case.model)
        return {"case": case, "model": model, "reference": as_is(model),
                "x": example_input(case.model, case.input_kind, case.size, case.seed)}

    def watched(self, setup):
        return {"model": setup["model"], "example_input": setup["x"]}

    def call(self, setup):
        return graphlrp.lower(setup["model"], setup["x"], **dict(setup["case"].options))

    def verify(self, setup, graph: graphlrp.Graph) -> None:
        case: LowerCase = setup["case"]
        spec = case.model
        require(case.input_kind not in ("vector", "wrong_width", "none", "list"),
                f"lower accepted an example input of kind {case.input_kind!r}")
        if case.input_kind not in VALID_INPUTS or spec.tuple_output:
            return
        fresh = torch.randn(4, spec.widths[0], dtype=spec.torch_dtype, generator=torch.Generator().manual_seed(
            case.seed + 1))
        rtol = tolerance(spec.torch_dtype)
        require_close("graph(x) against the model on other inputs", graph(fresh), setup["reference"](fresh), rtol)
        if not spec.varied or spec.training != "eval":
            return
        relevance = graphlrp.explain(graph, fresh, target=0, composite=LRP0).input_relevance
        require_finite("relevance of the lowered model", relevance)
        if canonical_spec(spec).homogeneous:
            expected = gradient_times_input(build_model(spec, canonical=True), fresh, [0] * len(fresh))
            require_close("LRP-0 against gradient × input", relevance, expected, rtol)
        else:
            canonical = graphlrp.lower(build_model(spec, canonical=True), fresh)
            expected = graphlrp.explain(canonical, fresh, target=0, composite=LRP0).input_relevance
            require_close("LRP-0 against the model written plainly", relevance, expected, rtol)


#: LRP-0 on every level: residual sums too, which by default take Zennit's Norm rule (ε = 1e-6),
#: whose stabilizer absorbs relevance where a sum is near zero, so gradient × input would not hold
LRP0 = graphlrp.Composite(by_type={"sum": rules.Epsilon(0.0)}, default=rules.Epsilon(0.0))


# -- edge lists ---------------------------------------------------------------------------------
#: one flaw per case; 'none' keeps the network valid
EDGE_FLAWS = ("none",) * 6 + (
    "cycle", "self_loop", "negative_id", "huge_id", "length_mismatch", "nan_weight", "inf_weight", "overflow_weight",
    "none_src", "string_ids", "float_ids", "bool_ids", "empty", "two_dimensional", "bias_length", "nan_bias",
    "input_bias", "unknown_activation", "activation_length", "duplicate_inputs", "input_out_of_range",
    "empty_outputs", "edge_into_input", "names_length", "duplicate_names", "int_dtype", "string_dtype",
    "unknown_block_kind", "grad_weight", "duplicate_edge", "huge_int_weight", "object_weights",
)
CONTAINERS = ("list", "numpy", "tensor")


@dataclass(frozen=True)
class EdgesCase:
    dag: DagSpec
    flaw: str
    container: str
    method: bool  # Graph.from_edges rather than graph_from_edges
    named: bool
    seed: int


def _container(values: list, kind: str, dtype=None) -> Any:
    if kind == "numpy":
        return np.array(values, dtype=dtype)
    if kind == "tensor":  # numpy's inference: float64 for floats, int64 for ints
        return torch.from_numpy(np.array(values, dtype=dtype))
    return list(values)


class EdgesDoor(Door):
    """``graphlrp.graph_from_edges`` and ``Graph.from_edges`` on valid networks and networks with one flaw."""

    name = "from_edges"
    owner = "graphlrp/frontends/edges.py"

    def cases(self):
        return st.builds(EdgesCase, dag=dag_specs(), flaw=st.sampled_from(EDGE_FLAWS),
                         container=st.sampled_from(CONTAINERS), method=st.booleans(), named=st.booleans(),
                         seed=st.integers(0, 2**16))

    def prepare(self, case: EdgesCase):
        dag, flaw = case.dag, case.flaw
        src = [s for s, _, _ in dag.edges]
        dst = [d for _, d, _ in dag.edges]
        weight: list[Any] = [w for _, _, w in dag.edges]
        bias: list[Any] = list(dag.bias)
        activation: list[Any] = list(dag.activation)
        inputs: list[Any] = list(dag.inputs)
        outputs = None if dag.outputs is None else list(dag.outputs)
        names: list[Any] | None = [f"n{v}" for v in range(dag.n)] if case.named else None
        options: dict[str, Any] = {"block_kind": dag.block_kind, "dtype": dag.torch_dtype}
        last = dag.output_ids[-1] if dag.output_ids else dst[-1]
        if flaw == "cycle":  # the first edge reversed: a two-node cycle (or an edge into an input)
            src.append(dst[0]), dst.append(src[0]), weight.append(0.5)
        elif flaw == "self_loop":
            src.append(last), dst.append(last), weight.append(0.5)
        elif flaw == "negative_id":
            src[0] = -1
        elif flaw == "huge_id":
            dst[-1] = 2**40
        elif flaw == "length_mismatch":
            weight.append(1.0)
        elif flaw == "nan_weight":
            weight[0] = NAN
        elif flaw == "inf_weight":
            weight[-1] = -INF
        elif flaw == "overflow_weight":
            weight[0], options["dtype"] = 1e300, torch.float32
        elif flaw == "none_src":
            src = None
        elif flaw == "string_ids":
            src = [str(s) for s in src]
        elif flaw == "float_ids":
            src = [s + 0.5 for s in src]
        elif flaw == "bool_ids":
            src = [bool(s % 2) for s in src]
        elif flaw == "empty":
            src, dst, weight = [], [], []
        elif flaw == "two_dimensional":
            src = [[s] for s in src]
        elif flaw == "bias_length":
            bias = bias[:-1]
        elif flaw == "nan_bias":
            bias[last] = NAN
        elif flaw == "input_bias":
            bias[inputs[0]] = 1.0
        elif flaw == "unknown_activation":
            activation[last] = "swish-ish"
        elif flaw == "activation_length":
            activation = activation[:-1]
        elif flaw == "duplicate_inputs":
            inputs = inputs + inputs[:1]
        elif flaw == "input_out_of_range":
            inputs[0] = dag.n + 3
        elif flaw == "empty_outputs":
            outputs = []
        elif flaw == "edge_into_input":
            src.append(last), dst.append(inputs[0]), weight.append(0.5)
        elif flaw == "names_length" and names is not None:
            names = names[:-1]
        elif flaw == "duplicate_names":
            names = ["same"] * dag.n
        elif flaw == "int_dtype":
            options["dtype"] = torch.int64
        elif flaw == "string_dtype":
            options["dtype"] = "float32"
        elif flaw == "unknown_block_kind":
            options["block_kind"] = "csr"
        elif flaw == "duplicate_edge":
            src.append(src[0]), dst.append(dst[0]), weight.append(weight[0])
        elif flaw == "huge_int_weight":
            weight = [int(w * 10) + 10**400 * (i == 0) for i, w in enumerate(weight)]
        elif flaw == "object_weights":
            weight = [str(w) for w in weight]
        arrays = {}
        for name, values in (("src", src), ("dst", dst), ("weight", weight), ("bias", bias)):
            try:
                arrays[name] = values if values is None else _container(values, case.container)
            except (TypeError, ValueError, OverflowError, RuntimeError):  # a value the container cannot hold
                arrays[name] = list(values)
        if flaw == "grad_weight" and isinstance(arrays["weight"], torch.Tensor):
            arrays["weight"] = arrays["weight"].double().requires_grad_(True)
        return {"case": case, **arrays, "activation": activation, "inputs": inputs, "outputs": outputs,
                "names": names, "options": options}

    def watched(self, setup):
        return {k: setup[k] for k in ("src", "dst", "weight", "bias", "activation", "inputs", "outputs", "names")}

    def call(self, setup):
        build = graphlrp.Graph.from_edges if setup["case"].method else graphlrp.graph_from_edges
        return build(setup["src"], setup["dst"], setup["weight"], setup["bias"], setup["activation"],
                     inputs=setup["inputs"], outputs=setup["outputs"], names=setup["names"], **setup["options"])

    def verify(self, setup, graph: graphlrp.Graph) -> None:
        case = setup["case"]
        valid = ("none", "grad_weight", "duplicate_edge", "empty") + (("names_length",) if not case.named else ())
        require(case.flaw in valid, f"from_edges accepted a network with the flaw {case.flaw!r}")
        dag = case.dag
        if case.flaw == "empty":  # no edges: every non-input node is a constant node
            dag = replace(dag, edges=())
        if case.flaw == "duplicate_edge":
            first = dag.edges[0]
            dag = replace(dag, edges=((first[0], first[1], 2 * first[2]),) + dag.edges[1:])
        x = torch.randn(3, len(dag.inputs), dtype=dag.torch_dtype, generator=torch.Generator().manual_seed(case.seed))
        rtol = tolerance(dag.torch_dtype)
        require_close("graph(x) against the node-by-node reference", graph(x), dag.reference(x), rtol)
        relevance = graphlrp.explain(graph, x, target=0, rule=rules.Epsilon(0.0)).input_relevance
        require_finite("relevance", relevance)
        if dag.homogeneous:
            require_close("LRP-0 against gradient × input", relevance,
                          gradient_times_input(dag.reference, x, [0] * len(x)), rtol)


# -- networkx -----------------------------------------------------------------------------------
NX_FLAWS = ("none",) * 6 + ("none_graph", "undirected", "multigraph", "missing_weight", "string_weight",
                            "huge_int_weight", "nan_weight", "huge_int_bias", "unknown_activation",
                            "number_activation", "input_not_in_graph", "graph_inputs_junk", "cycle", "weight_key",
                            "tuple_labels", "mixed_labels", "empty_graph")


@dataclass(frozen=True)
class NetworkxCase:
    dag: DagSpec
    flaw: str
    explicit: bool  # give inputs/outputs as arguments rather than leave them to G.graph or the default
    seed: int


class NetworkxDoor(Door):
    """``graphlrp.from_networkx(G, ...)`` on networkx graphs, valid and with one flaw."""

    name = "from_networkx"
    owner = "graphlrp/frontends/networkx_graph.py"

    def cases(self):
        return st.builds(NetworkxCase, dag=dag_specs(), flaw=st.sampled_from(NX_FLAWS), explicit=st.booleans(),
                         seed=st.integers(0, 2**16))

    def prepare(self, case: NetworkxCase):
        dag, flaw = case.dag, case.flaw
        label = {"tuple_labels": lambda v: (v, "n"), "mixed_labels": lambda v: v if v % 2 else f"n{v}"}.get(
            flaw, lambda v: v)
        kind = {"undirected": nx.Graph, "multigraph": nx.MultiDiGraph}.get(flaw, nx.DiGraph)
        G = kind()
        for v in range(dag.n):
            G.add_node(label(v), bias=dag.bias[v], activation=dag.activation[v])
        for s, d, w in dag.edges:
            G.add_edge(label(s), label(d), weight=w)
        inputs = [label(v) for v in dag.inputs]
        outputs = [label(v) for v in dag.output_ids]
        kwargs: dict[str, Any] = {"inputs": inputs, "outputs": outputs} if case.explicit else {}
        if not case.explicit:
            G.graph.update(inputs=inputs, outputs=outputs)
        s, d, _ = dag.edges[0]
        edge = (label(s), label(d))
        last = label(dag.output_ids[-1])
        if flaw == "none_graph":
            G = None
        elif flaw == "multigraph":
            G.add_edge(*edge, weight=0.25)
        elif flaw == "missing_weight":
            del G.edges[edge]["weight"]
        elif flaw == "string_weight":
            G.edges[edge]["weight"] = "heavy"
        elif flaw == "huge_int_weight":
            G.edges[edge]["weight"] = 10**400
        elif flaw == "nan_weight":
            G.edges[edge]["weight"] = NAN
        elif flaw == "huge_int_bias":
            G.nodes[last]["bias"] = -(10**400)
        elif flaw == "unknown_activation":
            G.nodes[last]["activation"] = "swish-ish"
        elif flaw == "number_activation":
            G.nodes[last]["activation"] = 3
        elif flaw == "input_not_in_graph":
            kwargs["inputs"] = inputs + ["ghost"]
        elif flaw == "graph_inputs_junk":
            G.graph["inputs"] = 5
            kwargs.pop("inputs", None)
        elif flaw == "cycle":  # the first edge reversed: a two-node cycle (or an edge into an input)
            G.add_edge(edge[1], edge[0], weight=1.0)
        elif flaw == "weight_key":
            kwargs["weight"] = "w"
        elif flaw == "empty_graph":
            G = nx.DiGraph()
        return {"case": case, "G": G, "kwargs": kwargs}

    def watched(self, setup):
        return {"G": setup["G"], "kwargs": setup["kwargs"]}

    def call(self, setup):
        return graphlrp.from_networkx(setup["G"], dtype=setup["case"].dag.torch_dtype, **setup["kwargs"])

    def verify(self, setup, graph: graphlrp.Graph) -> None:
        case = setup["case"]
        require(case.flaw in ("none", "multigraph", "tuple_labels", "mixed_labels", "undirected"),
                f"from_networkx accepted a graph with the flaw {case.flaw!r}")
        require(case.flaw != "undirected", "from_networkx accepted an undirected graph")
        dag = case.dag
        if case.flaw == "multigraph":
            s, d, w = dag.edges[0]
            dag = replace(dag, edges=((s, d, w + 0.25),) + dag.edges[1:])
        x = torch.randn(3, len(dag.inputs), dtype=dag.torch_dtype, generator=torch.Generator().manual_seed(case.seed))
        require_close("graph(x) against the node-by-node reference", graph(x), dag.reference(x),
                      tolerance(dag.torch_dtype))


# -- NEAT ---------------------------------------------------------------------------------------
NEAT_CONFIG = """
[NEAT]
fitness_criterion = max
fitness_threshold = 100.0
pop_size = 10
reset_on_extinction = False
no_fitness_termination = True

[DefaultGenome]
activation_default = sigmoid
activation_mutate_rate = 0.0
activation_options = sigmoid
aggregation_default = sum
aggregation_mutate_rate = 0.0
aggregation_options = sum
bias_init_mean = 0.0
bias_init_stdev = 1.0
bias_init_type = gaussian
bias_max_value = 30.0
bias_min_value = -30.0
bias_mutate_power = 0.5
bias_mutate_rate = 0.7
bias_replace_rate = 0.1
response_init_mean = 1.0
response_init_stdev = 0.0
response_init_type = gaussian
response_max_value = 30.0
response_min_value = -30.0
response_mutate_power = 0.0
response_mutate_rate = 0.0
response_replace_rate = 0.0
compatibility_disjoint_coefficient = 1.0
compatibility_weight_coefficient = 0.5
conn_add_prob = 0.5
conn_delete_prob = 0.5
enabled_default = True
enabled_mutate_rate = 0.01
feed_forward = True
initial_connection = full_direct
node_add_prob = 0.2
node_delete_prob = 0.2
num_hidden = 0
num_inputs = 2
num_outputs = 2
weight_init_mean = 0.0
weight_init_stdev = 1.0
weight_init_type = gaussian
weight_max_value = 30
weight_min_value = -30
weight_mutate_power = 0.5
weight_mutate_rate = 0.8
weight_replace_rate = 0.1

[DefaultSpeciesSet]
compatibility_threshold = 3.0

[DefaultStagnation]
species_fitness_func = max
max_stagnation = 20
species_elitism = 2

[DefaultReproduction]
elitism = 2
survival_threshold = 0.2
min_species_size = 1
"""
NEAT_ACTIVATIONS = ("sigmoid", "tanh", "relu", "elu", "lelu", "selu", "sin", "gauss", "softplus", "identity",
                    "clamped", "inv", "log", "exp", "abs", "hat", "square", "cube")
NEAT_FLAWS = ("none",) * 6 + ("none_genome", "none_config", "product_aggregation", "unknown_activation",
                              "huge_weight", "nan_weight", "cycle", "dangling", "all_disabled")


@functools.lru_cache(maxsize=1)
def neat_config():
    """The NEAT configuration every genome is made for (2 inputs ``-1, -2``; 2 outputs ``0, 1``)."""
    import neat

    path = Path(tempfile.mkdtemp(prefix="graphlrp-fuzz-neat-")) / "config.ini"
    path.write_text(NEAT_CONFIG)
    return neat.Config(neat.DefaultGenome, neat.DefaultReproduction, neat.DefaultSpeciesSet,
                       neat.DefaultStagnation, str(path))


@dataclass(frozen=True)
class NeatCase:
    hidden: int
    nodes: tuple[tuple[str, float, float], ...]  # (activation, bias, response) of outputs 0, 1 then hidden 2, 3, ...
    connections: tuple[tuple[int, int, float, bool], ...]
    flaw: str
    seed: int


@st.composite
def neat_cases(draw) -> NeatCase:
    hidden = draw(st.integers(0, 3))
    keys = [0, 1] + list(range(2, 2 + hidden))
    nodes = tuple((draw(st.sampled_from(NEAT_ACTIVATIONS)), draw(st.floats(-2, 2)), draw(st.floats(0.2, 2)))
                  for _ in keys)
    order = [-1, -2] + list(range(2, 2 + hidden)) + [0, 1]  # a topological order: inputs, hidden, outputs
    pairs = [(a, b) for i, a in enumerate(order) for b in order[i + 1:] if b >= 0 and not (a in (0, 1) and b in (0, 1))]
    chosen = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=6, unique=True))
    connections = tuple((a, b, draw(st.floats(-2, 2)), draw(st.integers(0, 5).map(lambda i: i > 0)))
                        for a, b in chosen)
    return NeatCase(hidden, nodes, connections, draw(st.sampled_from(NEAT_FLAWS)), draw(st.integers(0, 2**16)))


class NeatDoor(Door):
    """``graphlrp.from_neat(genome, config)``, then ``explain`` on the graph."""

    name = "from_neat"
    owner = "graphlrp/frontends/neat.py"

    def cases(self):
        return neat_cases()

    def prepare(self, case: NeatCase):
        import neat

        config = neat_config()
        genome = neat.DefaultGenome(0)
        nodes = list(case.nodes)
        for key, (activation, bias, response) in zip([0, 1] + list(range(2, 2 + case.hidden)), nodes):
            node = neat.DefaultGenome.create_node(config.genome_config, key)
            node.activation, node.aggregation, node.bias, node.response = activation, "sum", bias, response
            genome.nodes[key] = node
        connections = list(case.connections)
        for innovation, (a, b, weight, enabled) in enumerate(connections):
            genome.add_connection(config.genome_config, a, b, weight, enabled, innovation=innovation)
        flaw = case.flaw
        a, b = connections[0][:2]
        if flaw == "product_aggregation":
            genome.nodes[0].aggregation = "product"
        elif flaw == "unknown_activation":
            genome.nodes[1].activation = "swish-ish"
        elif flaw in ("huge_weight", "nan_weight"):  # on a connection into output 0, which is always computed
            value = 1e300 if flaw == "huge_weight" else NAN
            if (-1, 0) in genome.connections:
                genome.connections[-1, 0].weight, genome.connections[-1, 0].enabled = value, True
            else:
                genome.add_connection(config.genome_config, -1, 0, value, True, innovation=len(connections))
        elif flaw == "cycle" and a >= 0:
            genome.add_connection(config.genome_config, b, a, 1.0, True, innovation=len(connections))
        elif flaw == "dangling":
            genome.add_connection(config.genome_config, -1, 99, 1.0, True, innovation=len(connections))
        elif flaw == "all_disabled":
            for connection in genome.connections.values():
                connection.enabled = False
        return {"case": case, "genome": None if flaw == "none_genome" else genome,
                "config": None if flaw == "none_config" else config}

    def watched(self, setup):
        return {"genome": setup["genome"]}

    def call(self, setup):
        graph = graphlrp.from_neat(setup["genome"], setup["config"])
        x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(setup["case"].seed))
        return graph, x, graphlrp.explain(graph, x, target=0)

    def verify(self, setup, result) -> None:
        import neat

        graph, x, explanation = result
        case = setup["case"]
        require(case.flaw in ("none", "all_disabled", "dangling", "cycle", "huge_weight"),
                f"from_neat accepted a genome with the flaw {case.flaw!r}")
        network = neat.nn.FeedForwardNetwork.create(setup["genome"], setup["config"])
        expected = torch.tensor([network.activate(row) for row in x.tolist()], dtype=torch.float64)
        require_close("graph(x) against neat's activate", graph(x), expected, 1e-12)
        require_finite("relevance", explanation.node_relevance)
