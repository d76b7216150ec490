"""neat-python genomes as graphs: the graph computes what ``FeedForwardNetwork.activate`` computes."""
from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

neat = pytest.importorskip("neat")

import graphlrp  # noqa: E402
from graphlrp.frontends.neat import NEAT_ACTIVATIONS, from_neat, from_neat_network  # noqa: E402

ALL_ACTIVATIONS = sorted(neat.activations.ActivationFunctionSet().functions)

CONFIG = f"""
[NEAT]
fitness_criterion      = max
fitness_threshold      = 100.0
pop_size               = 40
reset_on_extinction    = False
no_fitness_termination = True

[DefaultGenome]
activation_default      = random
activation_mutate_rate  = 0.2
activation_options      = {" ".join(ALL_ACTIVATIONS)}
aggregation_default     = sum
aggregation_mutate_rate = 0.0
aggregation_options     = sum
bias_init_mean          = 0.0
bias_init_stdev         = 1.0
bias_init_type          = gaussian
bias_max_value          = 30.0
bias_min_value          = -30.0
bias_mutate_power       = 0.5
bias_mutate_rate        = 0.7
bias_replace_rate       = 0.1
response_init_mean      = 1.0
response_init_stdev     = 0.5
response_init_type      = gaussian
response_max_value      = 30.0
response_min_value      = -30.0
response_mutate_power   = 0.5
response_mutate_rate    = 0.5
response_replace_rate   = 0.1
compatibility_disjoint_coefficient = 1.0
compatibility_weight_coefficient   = 0.5
conn_add_prob           = 0.5
conn_delete_prob        = 0.2
enabled_default         = True
enabled_mutate_rate     = 0.2
feed_forward            = True
initial_connection      = partial_nodirect 0.5
node_add_prob           = 0.4
node_delete_prob        = 0.1
num_hidden              = 2
num_inputs              = 2
num_outputs             = 2
weight_init_mean        = 0.0
weight_init_stdev       = 1.0
weight_init_type        = gaussian
weight_max_value        = 30
weight_min_value        = -30
weight_mutate_power     = 0.5
weight_mutate_rate      = 0.8
weight_replace_rate     = 0.1

[DefaultSpeciesSet]
compatibility_threshold = 6.0

[DefaultStagnation]
species_fitness_func = max
max_stagnation       = 20
species_elitism      = 2

[DefaultReproduction]
elitism            = 2
survival_threshold = 0.2
min_species_size   = 1
"""

XOR = [((0.0, 0.0), 0.0), ((0.0, 1.0), 1.0), ((1.0, 0.0), 1.0), ((1.0, 1.0), 0.0)]


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("neat") / "xor.ini"
    path.write_text(CONFIG)
    return neat.Config(neat.DefaultGenome, neat.DefaultReproduction, neat.DefaultSpeciesSet,
                       neat.DefaultStagnation, str(path))


@pytest.fixture(scope="module")
def evolved(config):
    """Every genome of a few generations of XOR evolution (output 0 is trained, output 1 rides along)."""
    random.seed(0)
    seen = []

    def evaluate(genomes, config):
        for _, genome in genomes:
            network = neat.nn.FeedForwardNetwork.create(genome, config)
            error = sum((network.activate(x)[0] - y) ** 2 for x, y in XOR)
            genome.fitness = 4.0 - error if math.isfinite(error) else -1e9
            seen.append(copy.deepcopy(genome))

    neat.Population(config).run(evaluate, 8)
    return seen


def neat_outputs(network, x: np.ndarray) -> np.ndarray:
    return np.array([network.activate(row.tolist()) for row in x])


#: relative agreement with neat-python, about 10× the largest measured error: outputs 2.9e-15,
#: LRP-ε relevance 4.1e-16, activation functions 2.2e-16
NEAT_OUTPUT_TOLERANCE = 3e-14
NEAT_RELEVANCE_TOLERANCE = 5e-15


def assert_matches_neat(graph: graphlrp.Graph, network, x: np.ndarray) -> None:
    expected = neat_outputs(network, x)
    actual = graph(torch.from_numpy(x)).numpy()
    error = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
    assert error.max(initial=0.0) <= NEAT_OUTPUT_TOLERANCE, f"relative error {error.max():.3g}"


def make_genome(config, nodes: dict[int, tuple[str, float, float]], connections: list[tuple[int, int, float, bool]],
                aggregation: str = "sum"):
    """A genome with ``nodes[key] = (activation, bias, response)`` and ``(in, out, weight, enabled)`` connections."""
    genome = neat.DefaultGenome(0)
    for key, (activation, bias, response) in nodes.items():
        node = neat.DefaultGenome.create_node(config.genome_config, key)
        node.activation, node.aggregation, node.bias, node.response = activation, aggregation, bias, response
        genome.nodes[key] = node
    for innovation, (i, o, weight, enabled) in enumerate(connections):
        genome.add_connection(config.genome_config, i, o, weight, enabled, innovation=innovation)
    return genome


def edges_by_key(graph: graphlrp.Graph) -> dict[tuple[int, int], float]:
    src, dst, weight = graph.edges()
    keys = graph.original_ids
    return {(int(keys[s]), int(keys[d])): float(w) for s, d, w in zip(src, dst, weight)}


@pytest.mark.parametrize("name", ALL_ACTIVATIONS)
def test_every_builtin_activation_is_computed_exactly(name):
    neat_fn = neat.activations.ActivationFunctionSet().get(name)
    z = np.concatenate([np.linspace(-15, 15, 3001), [0.0, 1e-9, -1e-9, 59.0, 100.0, -100.0, 12.5, -13.0]])
    expected = np.array([neat_fn(float(v)) for v in z])  # neat-python computes on Python floats
    actual = NEAT_ACTIVATIONS[name](torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(actual, expected, rtol=2e-15, atol=1e-15)


def test_evolved_genomes_compute_what_neat_computes(config, evolved):
    rng = np.random.default_rng(0)
    x = np.concatenate([[x for x, _ in XOR], rng.uniform(-2, 2, size=(20, 2))])
    structures = set()
    for genome in evolved:
        graph = from_neat(genome, config)
        assert_matches_neat(graph, neat.nn.FeedForwardNetwork.create(genome, config), x)
        structures.add((len(graph.levels), graph.num_edges))
    assert len(evolved) >= 300
    assert len(structures) >= 10  # the genomes differ in depth and connectivity
    assert any(not c.enabled for g in evolved for c in g.connections.values())


def neat_epsilon_lrp(network, row: np.ndarray, output: int, epsilon: float) -> tuple[dict, dict]:
    """LRP-ε on neat-python's own network, node by node from its ``node_evals`` and the node values
    ``activate`` computed: ``z_j = b_j + response_j Σ_i w_ij v_i``, message ``v_i w_ij response_j /
    (z_j ± ε) · R_j``. Returns the relevance of every node and the message of every connection."""
    network.activate(row.tolist())
    values = network.values
    relevance = dict.fromkeys(values, 0.0)
    relevance[output] = values[output]
    messages: dict[tuple[int, int], float] = {}
    for node, _, _, bias, response, links in reversed(network.node_evals):
        contributions = [(i, values[i] * w * response) for i, w in links]
        z = sum(c for _, c in contributions) + bias
        denominator = z + (epsilon if z >= 0 else -epsilon)
        for i, c in contributions:
            message = c / denominator * relevance[node]
            relevance[i] += message
            messages[i, node] = messages.get((i, node), 0.0) + message
    return relevance, messages


@pytest.mark.parametrize("block_kind", ["sparse", "edges", "dense"])
def test_evolved_graphs_explain_as_lrp_on_the_neat_network(config, evolved, block_kind):
    """The genomes with the most evaluated nodes and connections (hidden nodes, skip connections) and the fittest."""
    def evaluated_nodes_and_links(genome) -> tuple[int, int]:
        node_evals = neat.nn.FeedForwardNetwork.create(genome, config).node_evals
        return len(node_evals), sum(len(links) for *_, links in node_evals)

    genomes = sorted(evolved, key=evaluated_nodes_and_links)[-3:] + [max(evolved, key=lambda genome: genome.fitness)]
    x = np.array([x for x, _ in XOR] + [[0.5, -1.5], [-2.0, 0.7]])
    carrying_hidden = 0
    for genome in genomes:
        graph = from_neat(genome, config, block_kind=block_kind)
        network = neat.nn.FeedForwardNetwork.create(genome, config)
        explanation = graphlrp.explain(graph, torch.from_numpy(x), target=0, rule=graphlrp.rules.Epsilon(0.01))
        keys = graph.original_ids.tolist()
        src, dst, _ = graph.edges()
        edges = [(keys[s], keys[d]) for s, d in zip(src.tolist(), dst.tolist())]
        hidden = [k for k in keys if k not in config.genome_config.input_keys + config.genome_config.output_keys]
        edge_relevance = explanation.edge_relevance()
        for b, row in enumerate(x):
            relevance, messages = neat_epsilon_lrp(network, row, config.genome_config.output_keys[0], 0.01)
            ours = dict(zip(keys, explanation.node_relevance[b].tolist()))
            scale = max(1.0, max(abs(r) for r in relevance.values()))
            assert max(abs(ours[k] - r) for k, r in relevance.items()) <= NEAT_RELEVANCE_TOLERANCE * scale
            assert sorted(edges) == sorted(messages)
            expected = torch.tensor([messages[e] for e in edges], dtype=torch.float64)
            assert (edge_relevance[b] - expected).abs().max() <= NEAT_RELEVANCE_TOLERANCE * scale
            carrying_hidden += any(abs(relevance[k]) > 1e-9 for k in hidden if k in relevance)
    assert carrying_hidden >= len(x)  # relevance passes through hidden nodes, not only input → output


def test_inputs_and_outputs_keep_neat_order_and_keys(config):
    genome = make_genome(config, {0: ("identity", 0.0, 1.0), 1: ("identity", 0.0, 1.0)},
                         [(-2, 0, 1.0, True), (-1, 1, 1.0, True)])
    graph = from_neat(genome, config)
    assert graph.original_ids[:2].tolist() == [-1, -2]
    assert graph.original_ids[graph.outputs].tolist() == [0, 1]
    out = graph(torch.tensor([[3.0, 5.0]], dtype=torch.float64))
    assert out.tolist() == [[5.0, 3.0]]


def test_disabled_connections_and_unneeded_nodes_give_no_edges(config):
    nodes = {0: ("tanh", 0.2, 2.0), 1: ("relu", -0.1, 0.5), 5: ("sigmoid", 0.3, 1.5), 6: ("sin", 0.0, 1.0)}
    connections = [
        (-1, 5, 1.0, True),
        (-2, 5, -1.0, False),  # disabled
        (5, 0, 0.5, True),
        (-2, 0, 3.0, True),   # skip edge
        (-1, 6, 1.0, True),   # 6 feeds no output: pruned, as neat-python prunes it
        (-1, 1, 2.0, False),  # output 1 has only a disabled connection: a constant node
    ]
    genome = make_genome(config, nodes, connections)
    graph = from_neat(genome, config)
    assert sorted(graph.original_ids.tolist()) == [-2, -1, 0, 1, 5]
    assert edges_by_key(graph) == pytest.approx({(-1, 5): 1.0 * 1.5, (5, 0): 0.5 * 2.0, (-2, 0): 3.0 * 2.0})
    x = np.random.default_rng(1).normal(size=(10, 2))
    assert_matches_neat(graph, neat.nn.FeedForwardNetwork.create(genome, config), x)


def test_from_network_equals_from_genome(config, evolved):
    genome = evolved[-1]
    network = neat.nn.FeedForwardNetwork.create(genome, config)
    x = np.random.default_rng(2).normal(size=(6, 2))
    for graph in (from_neat_network(network), from_neat(genome, config, block_kind="dense")):
        assert_matches_neat(graph, network, x)


def test_other_aggregations_are_refused(config):
    genome = make_genome(config, {0: ("identity", 0.0, 1.0), 1: ("identity", 0.0, 1.0)},
                         [(-1, 0, 1.0, True), (-2, 0, 1.0, True)], aggregation="product")
    with pytest.raises(ValueError, match="aggregates its inputs with 'product'; only 'sum'"):
        from_neat(genome, config)


def test_custom_activation_functions_are_refused(config):
    genome = make_genome(config, {0: ("identity", 0.0, 1.0), 1: ("identity", 0.0, 1.0)}, [(-1, 0, 1.0, True)])
    genome.nodes[0].activation = "mine"

    def mine(z):
        return 2 * z

    config.genome_config.add_activation("mine", mine)
    try:
        with pytest.raises(ValueError, match="activation function 'mine'.*not one of neat-python's built-in"):
            from_neat(genome, config)
    finally:
        del config.genome_config.activation_defs.functions["mine"]
