"""Doors of explaining: ``explain`` and its arguments, every rule's parameters, composites, the
methods of an :class:`~graphlrp.Explanation`, and the analysis functions."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st

import graphlrp
from graphlrp import analysis, composites, rules

from .core import Door, require, require_close, require_finite, tolerance
from .networks import DagSpec, Network, NetworkSpec, batch, build_network, network_specs
from .reference import all_paths, gradient_times_input, path_scores

NAN, INF = float("nan"), float("inf")

# -- rules --------------------------------------------------------------------------------------
#: values a numeric rule parameter is tried with: valid, at the edges, out of range, of other types
NUMBERS = st.one_of(
    st.floats(0, 4),
    st.sampled_from([0.0, -0.0, 1e-6, 0.25, 1.0, 1e30, 1e39, 1e300, -1.0, NAN, INF, -INF, True, 3, "0.1", None]),
)
FLAGS = st.one_of(st.booleans(), st.sampled_from([None, "yes", 2]))
STABILIZERS = st.sampled_from(["signed", "plain", "other", None])
BOUNDS = st.one_of(st.floats(-3, 3), st.sampled_from([NAN, INF, 1e300, "0", None]),
                   st.lists(st.floats(-3, 3), min_size=1, max_size=3))

#: the parameters of every rule, with the values they are tried with
RULE_PARAMETERS: dict[str, dict[str, st.SearchStrategy]] = {
    "Epsilon": {"epsilon": NUMBERS, "zero_bias": FLAGS, "stabilizer": STABILIZERS},
    "ZPlus": {"epsilon": NUMBERS, "zero_bias": FLAGS, "stabilizer": STABILIZERS, "weights_only": FLAGS},
    "AlphaBeta": {"alpha": NUMBERS, "beta": NUMBERS, "epsilon": NUMBERS, "zero_bias": FLAGS,
                  "stabilizer": STABILIZERS, "weights_only": FLAGS},
    "Gamma": {"gamma": NUMBERS, "epsilon": NUMBERS, "zero_bias": FLAGS, "stabilizer": STABILIZERS,
              "weights_only": FLAGS},
    "WSquare": {"epsilon": NUMBERS, "zero_bias": FLAGS, "stabilizer": STABILIZERS},
    "Flat": {"epsilon": NUMBERS, "stabilizer": STABILIZERS},
    "ZBox": {"low": BOUNDS, "high": BOUNDS, "epsilon": NUMBERS, "zero_bias": FLAGS, "stabilizer": STABILIZERS},
    "Norm": {"epsilon": NUMBERS},
    "Pass": {},
}
REQUIRED = {"ZBox": ("low", "high")}


@dataclass(frozen=True)
class RuleSpec:
    """``rules.<kind>(**kwargs)``, then ``setattr(rule, name, value)`` for each of ``assigned``."""

    kind: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    assigned: tuple[tuple[str, Any], ...] = ()

    def build(self) -> rules.Rule:
        rule = getattr(rules, self.kind)(**{k: _value(v) for k, v in self.kwargs})
        for name, value in self.assigned:
            setattr(rule, name, _value(value))
        return rule


def _value(value: Any) -> Any:
    """Lists stand for tensors in specs (so that a spec's repr is a reproducer)."""
    return torch.tensor(value, dtype=torch.float64) if isinstance(value, list) else value


#: LRP-0, whose relevance is gradient × input on homogeneous networks
LRP0 = RuleSpec("Epsilon", (("epsilon", 0.0),))


@st.composite
def rule_specs(draw, valid: bool = False) -> RuleSpec:
    """Every rule with its parameters; ``valid`` keeps to values in range."""
    kind = draw(st.sampled_from(sorted(RULE_PARAMETERS)))
    if valid:
        return _valid_rule(draw, kind)
    parameters = RULE_PARAMETERS[kind]
    kwargs = []
    for name, values in parameters.items():
        if name in REQUIRED.get(kind, ()) or draw(st.booleans()):
            kwargs.append((name, draw(values)))
    if kind == "AlphaBeta" and draw(st.booleans()):  # mostly a pair that satisfies alpha - beta = 1
        beta = draw(st.floats(0, 3))
        kwargs = [kv for kv in kwargs if kv[0] not in ("alpha", "beta")] + [("alpha", beta + 1), ("beta", beta)]
    assigned = []
    if parameters and draw(st.integers(0, 3)) == 0:
        name = draw(st.sampled_from(sorted(parameters)))
        assigned.append((name, draw(parameters[name])))
    return RuleSpec(kind, tuple(kwargs), tuple(assigned))


def _valid_rule(draw, kind: str) -> RuleSpec:
    epsilon = ("epsilon", draw(st.sampled_from([0.0, 1e-6, 0.1])))
    if kind == "Pass":
        return RuleSpec(kind)
    if kind == "Norm":
        return RuleSpec(kind, (epsilon,))
    if kind == "ZBox":
        low = draw(st.floats(-3, 0))
        return RuleSpec(kind, (("low", low), ("high", low + draw(st.floats(0, 3))), epsilon))
    kwargs = [epsilon]
    if kind == "AlphaBeta":
        beta = draw(st.floats(0, 2))
        kwargs += [("alpha", beta + 1), ("beta", beta)]
    if kind == "Gamma":
        kwargs.append(("gamma", draw(st.floats(0, 2))))
    if kind in ("ZPlus", "AlphaBeta", "Gamma"):
        kwargs.append(("weights_only", draw(st.booleans())))
    return RuleSpec(kind, tuple(kwargs))


# -- composites ---------------------------------------------------------------------------------
PRESETS = ("EpsilonPlus", "EpsilonPlusFlat", "EpsilonAlpha2Beta1", "EpsilonGammaBox")
LAYER_TYPES = st.sampled_from([nn.Linear, nn.Conv2d, (nn.Linear, nn.Conv1d), "node", "input", "Linear", None, 3])


@dataclass(frozen=True)
class CompositeSpec:
    """``Composite(...)`` with rules by name, by type, first and default, or a preset with its kwargs."""

    kind: str
    by_name: tuple[tuple[Any, Any], ...] = ()
    by_type: tuple[tuple[Any, Any], ...] = ()
    first: Any = None
    default: Any = None
    first_types: Any = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self) -> composites.Composite:
        if self.kind != "Composite":
            return getattr(composites, self.kind)(**{k: _value(v) for k, v in self.kwargs})
        options: dict[str, Any] = {"by_name": {k: _rule(v) for k, v in self.by_name} if self.by_name else None,
                                   "by_type": {k: _rule(v) for k, v in self.by_type} if self.by_type else None,
                                   "first": _rule(self.first), "default": _rule(self.default)}
        if self.first_types is not None:
            options["first_types"] = self.first_types
        return composites.Composite(**options)


def _rule(spec: Any) -> Any:
    return spec.build() if isinstance(spec, RuleSpec) else spec


RULE_OR_JUNK = st.one_of(rule_specs(valid=True), rule_specs(valid=True), st.sampled_from([None, "epsilon", 1.0]))


@st.composite
def composite_specs(draw) -> CompositeSpec:
    """Composites of valid and invalid entries, and the presets with their parameters."""
    kind = draw(st.sampled_from(("Composite",) * 4 + PRESETS))
    if kind != "Composite":
        names = ["epsilon", "stabilizer", "zero_bias"] + (["low", "high", "gamma"] if kind == "EpsilonGammaBox" else [])
        values = {"zero_bias": FLAGS, "low": BOUNDS, "high": BOUNDS}
        kwargs = [(n, draw(values.get(n, NUMBERS))) for n in names if n in ("low", "high") or draw(st.booleans())]
        return CompositeSpec(kind, kwargs=tuple(kwargs))
    patterns = st.sampled_from(["depth 1", "depth *", "0", "*", "input", "[", 3, None])
    return CompositeSpec(
        kind,
        by_name=tuple(draw(st.lists(st.tuples(patterns, RULE_OR_JUNK), max_size=2))),
        by_type=tuple(draw(st.lists(st.tuples(LAYER_TYPES, RULE_OR_JUNK), max_size=2))),
        first=draw(RULE_OR_JUNK), default=draw(RULE_OR_JUNK),
        first_types=draw(st.none() | st.sampled_from([(nn.Linear,), (), "Linear", (3,)])),
    )


# -- explain ------------------------------------------------------------------------------------
#: targets as tagged values: ('int', i), ('list', [...]), ('tensor', [...]), ('other', value)
TARGET_KINDS = ("valid", "valid", "valid", "per_sample", "tensor", "too_large", "negative", "wrong_length",
                "float", "bool", "string", "none", "numpy", "float_tensor", "nested")


def make_target(kind: str, classes: int, size: int, seed: int) -> Any:
    """A target of ``kind`` for a graph with ``classes`` outputs and a batch of ``size``."""
    rng = np.random.default_rng(seed)
    per_sample = rng.integers(0, classes, size).tolist()
    return {
        "valid": per_sample[0] if size else 0, "per_sample": per_sample,
        "tensor": torch.tensor(per_sample, dtype=torch.long), "too_large": classes, "negative": -1,
        "wrong_length": per_sample + [0], "float": 0.5, "bool": True, "string": "0", "none": None,
        "numpy": np.int64(0), "float_tensor": torch.zeros(size), "nested": [per_sample],
    }[kind]


def targets_of(target: Any, size: int) -> list[int]:
    """The class of every sample for a valid ``target``."""
    values = torch.as_tensor(target).reshape(-1).tolist()
    return values * size if len(values) == 1 else values


X_KINDS = ("ok", "ok", "ok", "ok", "nan", "inf", "empty", "wrong_width", "vector", "requires_grad", "int",
           "other_float", "float16", "none", "list", "noncontiguous", "huge")


#: input kinds explain must refuse
INVALID_X = ("nan", "inf", "empty", "wrong_width", "vector", "none")


def make_input(network: Network, kind: str, size: int, seed: int) -> Any:
    """An input batch of ``kind`` (valid: ``'ok'``, ``'requires_grad'``, ``'noncontiguous'``)."""
    x = batch(network, size, seed)
    if kind == "nan":
        x[0, 0] = NAN
    elif kind == "inf":
        x[-1, -1] = -INF
    elif kind == "empty":
        x = x[:0].clone()
    elif kind == "wrong_width":
        x = torch.cat([x, x[:, :1]], 1)
    elif kind == "vector":
        x = x[0].clone()
    elif kind == "requires_grad":
        x.requires_grad_(True)
    elif kind == "int":
        x = (3 * x).long()
    elif kind == "other_float":
        x = x.to(torch.float32 if network.dtype == torch.float64 else torch.float64)
    elif kind == "float16":
        x = x.half()
    elif kind == "none":
        x = None
    elif kind == "list":
        x = x.tolist()
    elif kind == "noncontiguous":
        x = x.T.contiguous().T
    elif kind == "huge":
        x = x * (1e300 if network.dtype == torch.float64 else 1e36)
    return x


@dataclass(frozen=True)
class ExplainCase:
    network: NetworkSpec
    x_kind: str
    size: int
    seed: int
    target_kind: str
    rule: Any  # RuleSpec, None, or something that is not a rule
    composite: Any  # CompositeSpec or None
    output_relevance: str  # 'none', 'ok', 'nan', 'wrong_shape', 'list'


@dataclass
class ExplainSetup:
    case: ExplainCase
    network: Network
    x: Any
    target: Any
    rule: Any
    composite: Any
    output_relevance: Any


class ExplainDoor(Door):
    """``graphlrp.explain(graph, x, target, rule, composite, output_relevance)``."""

    name = "explain"
    owner = "graphlrp/explanation.py"

    def cases(self):
        return st.builds(
            ExplainCase,
            network=network_specs(),
            x_kind=st.sampled_from(X_KINDS),
            size=st.integers(1, 3),
            seed=st.integers(0, 2**16),
            target_kind=st.sampled_from(TARGET_KINDS),
            rule=st.one_of(st.none(), rule_specs(valid=True), st.just(LRP0),
                           st.sampled_from(["epsilon", "composite", "class"])),
            composite=st.none() | st.none() | composite_specs(),
            output_relevance=st.sampled_from(["none"] * 6 + ["ok", "nan", "wrong_shape", "list"]),
        )

    def prepare(self, case: ExplainCase) -> ExplainSetup:
        network = build_network(case.network)
        x = make_input(network, case.x_kind, case.size, case.seed)
        classes = len(network.graph.outputs)
        relevance = None
        if case.output_relevance != "none":
            relevance = torch.randn(case.size, classes, dtype=network.dtype)
            if case.output_relevance == "nan":
                relevance[0, 0] = NAN
            elif case.output_relevance == "wrong_shape":
                relevance = relevance[:, :0]
            elif case.output_relevance == "list":
                relevance = relevance.tolist()
        target = None if relevance is not None and case.target_kind == "valid" else make_target(
            case.target_kind, classes, case.size, case.seed)
        return ExplainSetup(case, network, x, target, _explain_rule(case.rule), None, relevance)

    def watched(self, setup: ExplainSetup) -> dict[str, Any]:
        return {"x": setup.x, "target": setup.target, "rule": setup.rule, "output_relevance": setup.output_relevance}

    def call(self, setup: ExplainSetup):
        setup.composite = _composite(setup.case.composite)
        return graphlrp.explain(setup.network.graph, setup.x, target=setup.target, rule=setup.rule,
                                composite=setup.composite, output_relevance=setup.output_relevance)

    def verify(self, setup: ExplainSetup, result: graphlrp.Explanation) -> None:
        case = setup.case
        require(case.x_kind not in INVALID_X, f"explain accepted an input of kind {case.x_kind!r}")
        require_finite("node relevance", result.node_relevance)
        x = torch.as_tensor(setup.x).detach().to(setup.network.dtype)
        require(tuple(result.input_relevance.shape) == tuple(x.shape), "input relevance is not shaped like x")
        if isinstance(setup.rule, rules.Epsilon) and setup.rule.epsilon == 0 and setup.composite is None \
                and setup.network.homogeneous and setup.output_relevance is None and case.x_kind != "huge":
            expected = gradient_times_input(setup.network.reference, x, targets_of(setup.target, len(x)))
            require_close("LRP-0 against gradient × input", result.input_relevance, expected,
                          tolerance(setup.network.dtype))


def _explain_rule(rule: Any) -> Any:
    if isinstance(rule, RuleSpec):
        return rule.build()
    return {"composite": composites.EpsilonPlus(), "class": rules.Epsilon}.get(rule, rule)


def _composite(spec: Any) -> Any:
    return spec.build() if isinstance(spec, CompositeSpec) else spec


# -- rules and composites -----------------------------------------------------------------------
@dataclass(frozen=True)
class RuleCase:
    rule: RuleSpec
    network: NetworkSpec
    weight_scale: float
    seed: int


class RulesDoor(Door):
    """Every rule's constructor and parameters (also assigned after construction), then ``explain``."""

    name = "rules"
    owner = "graphlrp/rules.py"

    def cases(self):
        return st.builds(RuleCase, rule=rule_specs(), network=network_specs(),
                         weight_scale=st.sampled_from([1.0, 1.0, 1e10, 1e20, 1e30, 1e38]),
                         seed=st.integers(0, 2**16))

    def prepare(self, case: RuleCase) -> dict[str, Any]:
        network = build_network(case.network)
        if case.weight_scale != 1.0:
            network.graph = _scaled(network.graph, case.weight_scale)
        return {"case": case, "network": network, "x": batch(network, 2, case.seed)}

    def watched(self, setup):
        return {"x": setup["x"]}

    def call(self, setup):
        rule = setup["case"].rule.build()
        setup["rule"] = rule
        return graphlrp.explain(setup["network"].graph, setup["x"], target=0, rule=rule)

    def verify(self, setup, result) -> None:
        require_finite(f"relevance under {setup['rule']!r}", result.node_relevance)


def _scaled(graph: graphlrp.Graph, scale: float) -> graphlrp.Graph:
    """``graph`` with every weight multiplied by ``scale`` (a finite number in the graph's dtype)."""
    src, dst, weight = graph.edges()
    first = graph.levels[0]
    limit = torch.finfo(graph.dtype).max
    scaled = (weight.double() * scale).clamp(-limit, limit).to(graph.dtype)
    bias = torch.zeros(graph.num_nodes, dtype=graph.dtype)
    activation = ["identity"] * graph.num_nodes
    for level in graph.levels[1:]:
        if level.bias is not None:
            bias[level.offset: level.offset + level.size] = level.bias
        activation[level.offset: level.offset + level.size] = [level.activation] * level.size
    return graphlrp.graph_from_edges(src, dst, scaled, bias=bias, activation=activation,
                                     inputs=torch.arange(first.size), outputs=graph.outputs, dtype=graph.dtype)


@dataclass(frozen=True)
class CompositeCase:
    composite: CompositeSpec
    network: NetworkSpec
    as_rule: bool
    seed: int


class CompositesDoor(Door):
    """``Composite(...)`` and the presets, passed to ``explain`` as ``composite=`` (or wrongly as ``rule=``)."""

    name = "composites"
    owner = "graphlrp/composites.py"

    def cases(self):
        return st.builds(CompositeCase, composite=composite_specs(), network=network_specs(),
                         as_rule=st.integers(0, 5).map(lambda i: i == 0), seed=st.integers(0, 2**16))

    def prepare(self, case: CompositeCase):
        network = build_network(case.network)
        return {"case": case, "network": network, "x": batch(network, 2, case.seed)}

    def watched(self, setup):
        return {"x": setup["x"]}

    def call(self, setup):
        composite = setup["case"].composite.build()
        method = {"rule": composite} if setup["case"].as_rule else {"composite": composite}
        return graphlrp.explain(setup["network"].graph, setup["x"], target=0, **method)

    def verify(self, setup, result) -> None:
        require(not setup["case"].as_rule, "explain accepted a composite as rule=")
        require_finite("relevance", result.node_relevance)


# -- the explanation's methods ------------------------------------------------------------------
SAMPLES = st.one_of(st.integers(-4, 4), st.none(), st.lists(st.integers(-3, 3), max_size=3),
                    st.sampled_from([(), (0, 0), 0.0, True, "0", np.int64(0), [0.5], [[0]]]))
METHODS = ("edge_relevance", "to_networkx", "bias_relevance", "edge_contributions", "conservation_table",
           "level_relevance", "conservation", "input_relevance")


@dataclass(frozen=True)
class MethodCase:
    network: NetworkSpec
    size: int
    seed: int
    method: str
    sample: Any
    options: tuple[tuple[str, Any], ...]


@st.composite
def method_cases(draw) -> MethodCase:
    method = draw(st.sampled_from(METHODS))
    options: list[tuple[str, Any]] = []
    if method == "edge_relevance":
        options.append(("max_bytes", draw(st.sampled_from([None, None, 0, 1, 10**12, -1, "x", 1.5]))))
        options.append(("out", draw(st.sampled_from(["none", "none", "ok", "wrong_shape", "wrong_dtype",
                                                     "noncontiguous", "list"]))))
    if method == "to_networkx":
        options.append(("aggregate", draw(st.sampled_from(["sum", "mean", "mean_abs", "max", None]))))
        for name, values in (("top_k", st.sampled_from([None, 0, 1, 3, -1, 10**9, 2.5, "3"])),
                             ("threshold", st.sampled_from([None, 0.0, 0.1, -1.0, NAN, INF, "x"])),
                             ("mass", st.sampled_from([None, 0.5, 1.0, 0.0, 1.5, NAN, -0.1])),
                             ("keep_all_nodes", st.sampled_from([False, True, None]))):
            if draw(st.booleans()):
                options.append((name, draw(values)))
    if method == "level_relevance":
        options.append(("level", draw(st.one_of(st.integers(-4, 6), st.sampled_from(["input", "x", 1.0, None])))))
    return MethodCase(draw(network_specs()), draw(st.integers(1, 3)), draw(st.integers(0, 2**16)), method,
                      draw(SAMPLES), tuple(options))


class ExplanationDoor(Door):
    """The methods of an :class:`~graphlrp.Explanation`: edge relevance, ``to_networkx``, biases, tables."""

    name = "explanation"
    owner = "graphlrp/explanation.py, graphlrp/export.py"

    def cases(self):
        return method_cases()

    def prepare(self, case: MethodCase):
        network = build_network(case.network)
        x = batch(network, case.size, case.seed)
        explanation = graphlrp.explain(network.graph, x, target=0)
        options = dict(case.options)
        if "out" in options:
            options["out"] = _out_buffer(options["out"], explanation, case.sample)
        return {"case": case, "explanation": explanation, "options": options}

    def watched(self, setup):
        return {"sample": setup["case"].sample, "node_relevance": setup["explanation"].node_relevance}

    def call(self, setup):
        case, explanation, options = setup["case"], setup["explanation"], setup["options"]
        if case.method == "input_relevance":
            return explanation.input_relevance
        if case.method == "conservation":
            return explanation.conservation()
        if case.method == "level_relevance":
            return explanation.level_relevance(options["level"])
        method = getattr(explanation, case.method)
        return method(case.sample, **options)

    def verify(self, setup, result) -> None:
        case, explanation = setup["case"], setup["explanation"]
        if isinstance(result, torch.Tensor):
            require_finite(case.method, result)
        if case.method == "edge_relevance":
            _check_messages(explanation, case.sample, result)
        if case.method == "to_networkx":
            for _, data in result.nodes(data=True):
                require(math.isfinite(data["relevance"]), f"node relevance {data['relevance']} in to_networkx")
            for _, _, data in result.edges(data=True):
                require(math.isfinite(data["relevance"]), f"edge relevance {data['relevance']} in to_networkx")
        if case.method == "conservation":
            for balance in result:
                for part in ("relevance_in", "relevance_out", "bias", "stabilizer", "dropped"):
                    require_finite(f"conservation {part}", getattr(balance, part))
        if case.method == "conservation_table":
            require("nan" not in result.lower() and "inf" not in result.lower(), "NaN/inf in the conservation table")


def _out_buffer(kind: str, explanation: graphlrp.Explanation, sample: Any) -> Any:
    if kind == "none":
        return None
    rows = len(explanation.node_relevance) if sample is None else 1 if isinstance(sample, int) else len(sample) \
        if isinstance(sample, (list, tuple)) else 1
    shape = (explanation.graph.num_edges,) if isinstance(sample, int) else (rows, explanation.graph.num_edges)
    like = explanation.node_relevance
    if kind == "ok":
        return like.new_empty(shape)
    if kind == "wrong_shape":
        return like.new_empty((1, 1, 1))
    if kind == "wrong_dtype":
        return torch.empty(shape, dtype=torch.float16)
    if kind == "noncontiguous":
        return like.new_empty(tuple(reversed(shape))).T
    return [0.0]


def _check_messages(explanation: graphlrp.Explanation, sample: Any, messages: torch.Tensor) -> None:
    """The messages leaving every node sum to its relevance (for each sample asked)."""
    batch_size = len(explanation.node_relevance)
    if sample is None:
        rows = list(range(batch_size))
    else:
        rows = [int(sample)] if isinstance(sample, (int, np.integer)) else [int(s) for s in sample]
    messages = messages.reshape(len(rows), -1).double()
    src, _, _ = explanation.graph.edges()
    for position, row in enumerate(rows):
        leaving = torch.zeros(explanation.graph.num_nodes, dtype=torch.float64).index_add_(0, src, messages[position])
        has_edges = torch.zeros(explanation.graph.num_nodes, dtype=torch.bool)
        has_edges[src] = True
        relevance = explanation.node_relevance[row].double()
        require_close(f"messages leaving each node of sample {row}", leaving[has_edges], relevance[has_edges],
                      tolerance(explanation.node_relevance.dtype))


# -- analysis -----------------------------------------------------------------------------------
FUNCTIONS = ("top_paths", "relevant_circuit", "contrast", "level_flow", "rank_neurons", "mean_edge_relevance",
             "prune")
INTS = st.one_of(st.integers(-2, 6), st.sampled_from([0, 10**7, 2**62, 2.5, True, "3", None]))


@dataclass(frozen=True)
class AnalysisCase:
    network: NetworkSpec
    size: int
    seed: int
    function: str
    options: tuple[tuple[str, Any], ...]


@st.composite
def analysis_cases(draw) -> AnalysisCase:
    function = draw(st.sampled_from(FUNCTIONS))
    sample = st.one_of(st.integers(-3, 3), st.sampled_from([None, 0.0, "0", [0]]))
    spaces: dict[str, dict[str, st.SearchStrategy]] = {
        "top_paths": {"sample": sample, "target": st.one_of(st.none(), st.integers(-2, 4)), "k": INTS,
                      "score": st.sampled_from(["product", "sum", "max", None])},
        "relevant_circuit": {"sample": sample, "fraction": st.one_of(
            st.floats(0.01, 1), st.sampled_from([0.0, 1.0, 1.5, -0.1, NAN, INF, "0.5", None]))},
        "contrast": {"sample": sample, "k": INTS, "other": st.sampled_from(["same", "other_target", "other_graph"])},
        "level_flow": {"sample": st.one_of(sample, st.lists(st.integers(-3, 3), max_size=3))},
        "rank_neurons": {"level": st.one_of(st.integers(-2, 5), st.sampled_from(["input", "depth 1", "x", 1.0])),
                         "sample": sample, "k": INTS, "absolute": st.booleans()},
        "mean_edge_relevance": {"targets": st.sampled_from([0, [0], "per_sample", 5, -1, 0.5, None]),
                                "batch_size": INTS, "absolute": st.booleans(), "inputs": st.sampled_from(
                                    ["ok", "ok", "empty", "nan", "list"])},
        "prune": {"keep": st.sampled_from(["half", "none", "all", "out_of_range", "float", "list", "bool"])},
    }
    required = {"rank_neurons": ("level",), "mean_edge_relevance": ("targets",)}.get(function, ())
    options = tuple((name, draw(values)) for name, values in spaces[function].items()
                    if name in required or draw(st.integers(0, 4)) > 0)
    return AnalysisCase(draw(network_specs()), draw(st.integers(1, 3)), draw(st.integers(0, 2**16)), function,
                        options)


class AnalysisDoor(Door):
    """``top_paths``, ``relevant_circuit`` (and its faithfulness), ``contrast``, ``level_flow``,
    ``rank_neurons``, ``mean_edge_relevance`` and ``prune``."""

    name = "analysis"
    owner = "graphlrp/analysis.py"

    def cases(self):
        return analysis_cases()

    def prepare(self, case: AnalysisCase):
        network = build_network(case.network)
        x = batch(network, case.size, case.seed)
        explanation = graphlrp.explain(network.graph, x, target=0)
        options = dict(case.options)
        if case.function == "contrast":
            other = options.pop("other", "same")
            if other == "other_graph":
                twin = build_network(_other_network(case.network))
                options["explanation_b"] = graphlrp.explain(twin.graph, batch(twin, case.size, case.seed), target=0)
            else:
                target = (len(network.graph.outputs) - 1) if other == "other_target" else 0
                options["explanation_b"] = graphlrp.explain(network.graph, x, target=target)
        if case.function == "mean_edge_relevance":
            options["inputs"] = {"ok": x, "empty": x[:0], "nan": x.clone().fill_(NAN), "list": x.tolist()}[
                options.get("inputs", "ok")]
            if options.get("targets") == "per_sample":
                options["targets"] = [0] * case.size
        if case.function == "prune":
            options["keep"] = _keep(options.get("keep", "half"), network.graph.num_edges)
        return {"case": case, "network": network, "x": x, "explanation": explanation, "options": options}

    def watched(self, setup):
        return {"node_relevance": setup["explanation"].node_relevance, "x": setup["x"],
                **{k: v for k, v in setup["options"].items() if isinstance(v, (torch.Tensor, list))}}

    def call(self, setup):
        function, explanation, options = setup["case"].function, setup["explanation"], setup["options"]
        if function == "mean_edge_relevance":
            return analysis.mean_edge_relevance(setup["network"].graph, progress=False, **options)
        if function == "prune":
            return analysis.prune(setup["network"].graph, options["keep"])
        result = getattr(analysis, function)(explanation, **options)
        if function == "relevant_circuit":
            return result, result.faithfulness()
        return result

    def verify(self, setup, result) -> None:
        function, explanation, options = setup["case"].function, setup["explanation"], setup["options"]
        if function == "top_paths":
            _check_paths(explanation, options, result)
        elif function == "relevant_circuit":
            _check_circuit(explanation, options, *result)
        elif function == "contrast":
            for item in result:
                require(all(math.isfinite(v) for v in (item.relevance_a, item.relevance_b, item.difference)),
                        f"non-finite contrast {item}")
                # a - b rounded once in the graph's dtype: within one unit in the last place
                eps = torch.finfo(explanation.node_relevance.dtype).eps
                require(abs(item.difference - (item.relevance_a - item.relevance_b)) <= eps * max(
                    abs(item.relevance_a), abs(item.relevance_b), 1e-30), f"difference is not a - b in {item}")
        elif function == "level_flow":
            for row in result:
                require(all(math.isfinite(row[k]) for k in ("positive", "negative", "total")), f"non-finite {row}")
        elif function == "rank_neurons":
            values = [n.relevance for n in result]
            require(all(math.isfinite(v) for v in values), f"non-finite ranking {values}")
            keys = [abs(v) for v in values] if options.get("absolute") else values
            require(keys == sorted(keys, reverse=True), f"ranking not in order: {values}")
        elif function == "mean_edge_relevance":
            require_finite("mean edge relevance", result)
        elif function == "prune":
            x = batch(setup["network"], 2, 1)
            require_finite("pruned graph's output", result(x))


def _other_network(spec: NetworkSpec) -> NetworkSpec:
    """A network of the same shape with other weights."""
    if isinstance(spec, DagSpec):
        return replace(spec, edges=tuple((s, d, -w) for s, d, w in spec.edges))
    return replace(spec, seed=spec.seed + 1)


def _keep(kind: str, num_edges: int) -> Any:
    return {"half": torch.arange(0, num_edges, 2), "none": torch.zeros(0, dtype=torch.long),
            "all": torch.arange(num_edges), "out_of_range": torch.tensor([num_edges + 5]),
            "float": torch.tensor([0.0]), "list": [0], "bool": torch.ones(num_edges, dtype=torch.bool)}[kind]


def _check_paths(explanation: graphlrp.Explanation, options: dict, paths: list) -> None:
    """The paths' scores are the ``k`` best of every input-to-target path, enumerated (tiny graphs)."""
    sample = options.get("sample", 0)
    row = sample % len(explanation.node_relevance)
    score = options.get("score", "product")
    k = options.get("k", 5)
    graph = explanation.graph
    src, dst, _ = (t.tolist() for t in graph.edges())
    relevance = explanation.node_relevance[row].double().tolist()
    messages = explanation.edge_relevance(row).double().tolist()
    target = options.get("target")
    outputs = graph.outputs.tolist()
    if target is not None:
        goal = outputs[target]
    else:  # the output of largest |relevance|; with ties, any of them
        largest = max(abs(relevance[o]) for o in outputs)
        candidates = [o for o in outputs if abs(relevance[o]) == largest]
        goal = paths[0].nodes[-1] if paths else candidates[0]
        require(goal in candidates, f"paths end at node {goal}, not at an output of largest |relevance| {candidates}")
    found = all_paths(src, dst, set(range(graph.levels[0].size)), goal)
    expected = sorted((abs(v) for v in path_scores(found, messages, relevance, dst, goal, score)), reverse=True)[:k]
    actual = [abs(p.score) for p in paths]
    require(len(actual) == len(expected), f"{len(actual)} paths, expected {len(expected)} (k={k})")
    require(all(math.isfinite(v) for v in actual), f"non-finite path scores {actual}")
    require_close("path scores against enumeration", torch.tensor(actual), torch.tensor(expected), 1e-9)


def _check_circuit(explanation: graphlrp.Explanation, options: dict, circuit, faithfulness) -> None:
    """The circuit carries ``fraction`` and no smaller set of edges does."""
    fraction = options.get("fraction", 0.9)
    messages = explanation.edge_relevance(circuit.sample).double().abs()
    total = float(messages.sum())
    kept = float(messages[circuit.edges].sum()) if len(circuit.edges) else 0.0
    if total > 0:
        require(kept >= fraction * total * (1 - 1e-9), f"circuit carries {kept / total:.6g} < {fraction}")
        best = messages.sort(descending=True).values
        fewer = float(best[: len(circuit.edges) - 1].sum()) if len(circuit.edges) else 0.0
        require(fewer < fraction * total * (1 + 1e-9), f"{len(circuit.edges) - 1} edges would carry {fraction} already")
    require_finite("faithfulness output", faithfulness.circuit_output)
