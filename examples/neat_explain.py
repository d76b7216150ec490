"""Evolve a NEAT network on scikit-learn's iris flowers and explain its decisions with graphlrp.

Evolves a feed-forward network with neat-python (4 standardized measurements in, one sigmoid
output per species, seeded, about ten seconds), turns it into a graphlrp graph with
``graphlrp.from_neat``, checks that the graph computes what ``net.activate`` computes, and
explains the predicted class of every flower with LRP-ε. Prints the relevance of each
measurement averaged per predicted class and the most relevant paths through the evolved
topology (inputs named by feature, outputs by class, hidden nodes ``h<NEAT key>``), and draws
one flower's circuit to ``out/neat_circuit.png``.

How relevance flows here (standard LRP):

- the explained score is the predicted class's output, a NEAT sigmoid ``1 / (1 + e^{-5z})``:
  always positive, so the relevance that starts at the output is positive;
- element-wise activations pass relevance through unchanged, from a node's output to its
  weighted sum ``z_j = Σ_i w_ij a_i + b_j`` (NEAT's response is folded into the weights);
- every node splits it over its incoming edges with the ε rule
  ``R_i = Σ_j a_i w_ij / (z_j + ε·sign(z_j)) · R_j`` (``graphlrp.rules.Epsilon``); the bias
  keeps its share ``b_j / (z_j + ε·sign(z_j)) · R_j``. Where ``z_j < 0`` (an output below 0.5)
  the edges pulling ``z_j`` down receive the positive relevance.

The inputs are standardized, so an input's relevance is measured against the average flower
(input 0).

Run: ``python examples/neat_explain.py [--out DIR] [--generations N] [--quick]``.
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import neat
import networkx as nx
import numpy as np
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split

import graphlrp
from graphlrp import analysis, plot, rules

#: neat-python configuration: sigmoid nodes, sum aggregation, response fixed at 1
CONFIG = """
[NEAT]
fitness_criterion      = max
fitness_threshold      = 0.0
pop_size               = {pop_size}
reset_on_extinction    = True
no_fitness_termination = True

[DefaultGenome]
activation_default      = sigmoid
activation_mutate_rate  = 0.0
activation_options      = sigmoid
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
response_init_stdev     = 0.0
response_init_type      = gaussian
response_max_value      = 30.0
response_min_value      = -30.0
response_mutate_power   = 0.0
response_mutate_rate    = 0.0
response_replace_rate   = 0.0
compatibility_disjoint_coefficient = 1.0
compatibility_weight_coefficient   = 0.5
conn_add_prob           = 0.3
conn_delete_prob        = 0.2
enabled_default         = True
enabled_mutate_rate     = 0.01
feed_forward            = True
initial_connection      = full_direct
node_add_prob           = 0.2
node_delete_prob        = 0.1
num_hidden              = 2
num_inputs              = {num_inputs}
num_outputs             = {num_outputs}
weight_init_mean        = 0.0
weight_init_stdev       = 1.0
weight_init_type        = gaussian
weight_max_value        = 30
weight_min_value        = -30
weight_mutate_power     = 0.5
weight_mutate_rate      = 0.8
weight_replace_rate     = 0.1

[DefaultSpeciesSet]
compatibility_threshold = 4.0

[DefaultStagnation]
species_fitness_func = max
max_stagnation       = 15
species_elitism      = 2

[DefaultReproduction]
elitism            = 2
survival_threshold = 0.2
min_species_size   = 2
"""

#: outputs are scaled by this before the softmax of the fitness (sigmoid outputs lie in (0, 1))
SOFTMAX_SCALE = 4.0
#: the explanation's rule
RULE = rules.Epsilon(0.01)


@dataclass(frozen=True)
class Dataset:
    """Standardized iris measurements, split for training and testing."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    features: list[str]
    classes: list[str]

    @property
    def x(self) -> np.ndarray:
        """All samples, training then test."""
        return np.concatenate([self.x_train, self.x_test])


def load_data() -> Dataset:
    """Iris, each measurement standardized to mean 0 and standard deviation 1, split 70/30."""
    iris = load_iris()
    x = (iris.data - iris.data.mean(0)) / iris.data.std(0)
    x_train, x_test, y_train, y_test = train_test_split(x, iris.target, test_size=0.3, random_state=0,
                                                        stratify=iris.target)
    features = [name.removesuffix(" (cm)") for name in iris.feature_names]
    return Dataset(x_train, y_train, x_test, y_test, features, list(iris.target_names))


def neat_config(num_inputs: int, num_outputs: int, pop_size: int, directory: Path) -> neat.Config:
    """Write :data:`CONFIG` into ``directory`` and load it."""
    path = directory / "neat.ini"
    path.write_text(CONFIG.format(pop_size=pop_size, num_inputs=num_inputs, num_outputs=num_outputs))
    return neat.Config(neat.DefaultGenome, neat.DefaultReproduction, neat.DefaultSpeciesSet,
                       neat.DefaultStagnation, str(path))


def activate(network: neat.nn.FeedForwardNetwork, x: np.ndarray) -> np.ndarray:
    """``network.activate`` on every row of ``x``, ``(len(x), num_outputs)``."""
    return np.array([network.activate(row.tolist()) for row in x])


def log_likelihood(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean log-probability of the true class under ``softmax(SOFTMAX_SCALE · outputs)``."""
    logits = SOFTMAX_SCALE * outputs
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(log_p[np.arange(len(y)), y].mean())


def evolve(config: neat.Config, x: np.ndarray, y: np.ndarray, generations: int, seed: int) -> neat.DefaultGenome:
    """The fittest genome after ``generations`` generations (fitness: :func:`log_likelihood`)."""

    def evaluate(genomes: list[tuple[int, neat.DefaultGenome]], config: neat.Config) -> None:
        for _, genome in genomes:
            network = neat.nn.FeedForwardNetwork.create(genome, config)
            genome.fitness = log_likelihood(activate(network, x), y)

    random.seed(seed)
    return neat.Population(config).run(evaluate, generations)


def accuracy(network: neat.nn.FeedForwardNetwork, x: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose largest output is the true class."""
    return float((activate(network, x).argmax(1) == y).mean())


def node_names(graph: graphlrp.Graph, data: Dataset) -> list[str]:
    """A name for every graph node: feature names for inputs, class names for outputs, else ``h<key>``.

    NEAT numbers inputs ``-1, -2, ...`` and outputs ``0, 1, ...``; hidden nodes get larger keys.
    """
    names = []
    for key in graph.original_ids.tolist():
        if key < 0:
            names.append(data.features[-key - 1])
        elif key < len(data.classes):
            names.append(data.classes[key])
        else:
            names.append(f"h{key}")
    return names


def class_means(values: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """Mean of ``values`` over the samples predicted as each class, ``(classes, ...)`` (NaN if never predicted)."""
    return np.array([values[predicted == c].mean(0) if (predicted == c).any() else np.full(values.shape[1:], np.nan)
                     for c in range(classes)])


def print_relevance_table(explanation: graphlrp.Explanation, predicted: np.ndarray, data: Dataset) -> None:
    """Per predicted class: mean relevance of each feature, the mean score, and what biases and ε took."""
    classes = len(data.classes)
    relevance = class_means(explanation.input_relevance.numpy(), predicted, classes)
    scores = class_means(explanation.output.numpy()[np.arange(len(predicted)), predicted], predicted, classes)
    rows = {**dict(zip(data.features, relevance.T)), "score": scores, "biases and ε": scores - relevance.sum(1)}
    width = max(len(name) for name in rows)
    print(f"{'':{width}}  " + "  ".join(f"{c:>10}" for c in data.classes))
    for name, values in rows.items():
        print(f"{name:{width}}  " + "  ".join(f"{v:+10.4f}" for v in values))


def print_top_paths(explanation: graphlrp.Explanation, sample: int, target: int, names: list[str], k: int) -> None:
    """The ``k`` most relevant paths to the ``target`` output, each with the relevance flowing along it."""
    for path in analysis.top_paths(explanation, sample=sample, target=target, k=k):
        route = " -> ".join(names[node] for node in path.nodes)
        print(f"  {path.score:+.4f}  {route}")


def draw(explanation: graphlrp.Explanation, sample: int, names: list[str], path: Path) -> Path:
    """Draw the edges of one sample's explanation that carry relevance, labelled by :func:`node_names`."""
    circuit = explanation.to_networkx(sample=sample, threshold=1e-9)
    nx.set_node_attributes(circuit, {node: names[node] for node in circuit}, "label")
    return plot.draw_circuit(circuit, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the circuit PNG")
    parser.add_argument("--generations", type=int, default=60, help="generations of evolution")
    parser.add_argument("--pop-size", type=int, default=100, help="genomes per generation")
    parser.add_argument("--seed", type=int, default=0, help="seed of Python's random (NEAT's randomness)")
    parser.add_argument("--sample", type=int, default=0, help="flower whose circuit is drawn (training set first)")
    parser.add_argument("--quick", action="store_true", help="evolve 10 generations of 50 genomes (a smoke test)")
    args = parser.parse_args()
    generations, pop_size = (10, 50) if args.quick else (args.generations, args.pop_size)
    data = load_data()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        config = neat_config(len(data.features), len(data.classes), pop_size, Path(directory))
        genome = evolve(config, data.x_train, data.y_train, generations, args.seed)
    network = neat.nn.FeedForwardNetwork.create(genome, config)
    print(f"evolved {generations} generations of {pop_size} genomes in {time.perf_counter() - start:.1f} s: "
          f"{len(genome.nodes)} nodes, {sum(c.enabled for c in genome.connections.values())} enabled connections")
    print(f"accuracy: train {accuracy(network, data.x_train, data.y_train):.3f}, "
          f"test {accuracy(network, data.x_test, data.y_test):.3f}\n")

    graph = graphlrp.from_neat(genome, config)
    print(graph, "\n")
    x = torch.from_numpy(data.x)
    outputs = graph(x).numpy()
    error = np.abs(outputs - activate(network, data.x)).max()
    print(f"max |graph(x) - net.activate(x)| over {len(x)} flowers: {error:.3g}\n")

    predicted = outputs.argmax(1)
    explanation = graphlrp.explain(graph, x, target=torch.from_numpy(predicted), rule=RULE)
    print(f"mean input relevance ({RULE.label()}) of the flowers predicted as each class:")
    print_relevance_table(explanation, predicted, data)

    names = node_names(graph, data)
    for c, name in enumerate(data.classes):
        samples = np.flatnonzero(predicted == c)
        if len(samples):
            first = int(samples[0])
            print(f"\nmost relevant paths of flower {first} (predicted {name}, score {outputs[first, c]:.3f}):")
            print_top_paths(explanation, first, c, names, k=3)

    path = draw(explanation, args.sample, names, args.out / "neat_circuit.png")
    print(f"\nwrote {path} (flower {args.sample}, predicted {data.classes[predicted[args.sample]]})")


if __name__ == "__main__":
    main()
