"""Model cases of ``scripts/bench``: networks, rules, and timing graphlrp against Zennit and torch."""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import zennit.composites
import zennit.rules
import zennit.types
from torch import Tensor, nn
from torch.nn.utils import prune
from zennit.attribution import Gradient
from zennit.core import BasicHook, Composite as ZennitComposite, ParamMod, Stabilizer

import graphlrp
from _bench_util import Target, Timing, time_interleaved, time_once

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_cnn import randomize_batch_norms  # noqa: E402
from zennit_twins import TracedMergeBatchNorm, twin_layer_map, zennit_twin  # noqa: E402  (the tests' Zennit reference)

#: calls in a row per library for the steady-state times (``ratio, runs of 5``)
RUN_LENGTH = 5
MLP_WIDTH = 1024
MLP_HIDDEN_LAYERS = 4
MLP_CLASSES = 10


# -- networks ---------------------------------------------------------------------------------
def mlp() -> nn.Sequential:
    """4 × (Linear(1024, 1024), ReLU), then Linear(1024, 10): 4.2 M weights."""
    layers: list[nn.Module] = []
    for _ in range(MLP_HIDDEN_LAYERS):
        layers += [nn.Linear(MLP_WIDTH, MLP_WIDTH), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(MLP_WIDTH, MLP_CLASSES))


def lenet5() -> nn.Sequential:
    """LeNet-5 for 1 × 28 × 28 inputs."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def prune_linear_layers(model: nn.Module, amount: float) -> None:
    """Prune every ``nn.Linear`` weight by magnitude (``l1_unstructured``), keeping the prune hooks."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            prune.l1_unstructured(module, "weight", amount=amount)


def baked_copy(model: nn.Module) -> nn.Module:
    """A copy with the effective (masked) weights as plain parameters and no prune hooks."""
    baked = copy.deepcopy(model)
    for module in baked.modules():
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return baked


# -- rules ------------------------------------------------------------------------------------
class EdgeFlat(BasicHook):
    """Zennit's ``Flat`` restricted to existing edges: zero (pruned) weights get no share.

    graphlrp's ``Flat`` gives every *edge* weight one; Zennit's gives every entry of the dense
    weight matrix one. On unpruned layers the two agree; this hook is the reference on pruned ones.
    """

    def __init__(self, stabilizer: float = 1e-6) -> None:
        stabilize = Stabilizer.ensure(stabilizer)
        super().__init__(
            input_modifiers=[torch.ones_like],
            param_modifiers=[ParamMod(_edge_indicator, require_params=False)],
            output_modifiers=[lambda output: output],
            gradient_mapper=lambda out_grad, outputs: out_grad / stabilize(outputs[0]),
            reducer=lambda inputs, gradients: gradients[0],
        )


def _edge_indicator(param: Tensor, name: str) -> Tensor:
    return param.ne(0).to(param.dtype) if name == "weight" else torch.zeros_like(param)


def _layer_map(rule: Callable[[], BasicHook]) -> Callable[[], ZennitComposite]:
    """Zennit composite: ``rule`` on every ``nn.Linear``, ``Pass`` on activations."""
    return lambda: zennit.composites.LayerMapComposite(
        [(zennit.types.Activation, zennit.rules.Pass()), (nn.Linear, rule())]
    )


@dataclass(frozen=True)
class RuleSpec:
    """One rule (or composite) in both libraries, with the same parameters.

    ``reference`` builds the Zennit composite the agreement check uses on pruned models (their
    baked twin); by default the same as ``zennit``.
    """

    name: str
    graphlrp: Callable[[], dict]
    zennit: Callable[[], ZennitComposite]
    reference: Callable[[], ZennitComposite] | None = None


EPSILON = RuleSpec("ε", lambda: {"rule": graphlrp.rules.Epsilon()}, _layer_map(zennit.rules.Epsilon))
ZPLUS = RuleSpec("z⁺", lambda: {"rule": graphlrp.rules.ZPlus()}, _layer_map(zennit.rules.ZPlus))
ALPHA_BETA = RuleSpec(
    "αβ(2,1)",
    lambda: {"rule": graphlrp.rules.AlphaBeta(2.0, 1.0)},
    _layer_map(lambda: zennit.rules.AlphaBeta(2.0, 1.0)),
)
GAMMA = RuleSpec("γ(0.25)", lambda: {"rule": graphlrp.rules.Gamma(0.25)}, _layer_map(lambda: zennit.rules.Gamma(0.25)))
EPSILON_PLUS_FLAT = RuleSpec(
    "EpsilonPlusFlat",
    lambda: {"composite": graphlrp.composites.EpsilonPlusFlat()},
    zennit.composites.EpsilonPlusFlat,
    lambda: zennit.composites.EpsilonPlusFlat(first_map=[(zennit.types.Linear, EdgeFlat())]),
)
MLP_RULES = (EPSILON, ZPLUS, ALPHA_BETA, GAMMA, EPSILON_PLUS_FLAT)
#: EpsilonPlusFlat on a torchvision model: Zennit explains its traced twin (batch norms merged,
#: residual sums as Zennit's ``Sum``), as the agreement tests do
EPSILON_PLUS_FLAT_TWIN = RuleSpec(
    "EpsilonPlusFlat",
    lambda: {"composite": graphlrp.composites.EpsilonPlusFlat()},
    lambda: zennit.composites.EpsilonPlusFlat(layer_map=twin_layer_map(), canonizers=[TracedMergeBatchNorm()]),
)


def torchvision_model(name: str) -> Callable[[], nn.Module]:
    """A torchvision classifier with random weights and batch-norm statistics; batch norms with a tiny
    ``eps``, as Zennit's merged batch norm still divides by ``√(1 + eps)``."""
    def build() -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        randomize_batch_norms(model)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = 1e-12
        return model.eval()

    return build


# -- cases ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCase:
    """A network at one batch size, optionally pruned, with the rules to time and their targets.

    ``targets`` maps a rule name to the highest allowed time ratio graphlrp / Zennit;
    ``gradient_target`` is the highest allowed ratio graphlrp-ε / plain gradient.
    """

    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    batch: int
    rules: tuple[RuleSpec, ...]
    prune_amount: float | None = None
    targets: dict[str, float] = field(default_factory=dict)
    gradient_target: float | None = None
    #: the model Zennit explains, made from the built one (default: the same)
    zennit_model: Callable[[nn.Module], nn.Module] | None = None


@dataclass
class RuleResult:
    """Times (median seconds per explain) and agreement of one rule on one case."""

    rule: str
    graphlrp_s: float | None
    zennit_s: float
    target: Target | None
    #: the same in runs of RUN_LENGTH calls per library (each run's first call follows the other's)
    graphlrp_run_s: float | None = None
    zennit_run_s: float | None = None
    error: float | None = None  # max |R_graphlrp − R_zennit| / max |R_zennit| (baked twin if pruned)
    error_f64: float | None = None  # the same with both computed in float64
    error_as_is: float | None = None  # the same against Zennit on the pruned model as timed

    @property
    def ratio(self) -> float | None:
        """graphlrp time / Zennit time, calls alternating."""
        return None if self.graphlrp_s is None else self.graphlrp_s / self.zennit_s

    @property
    def run_ratio(self) -> float | None:
        """graphlrp time / Zennit time, in runs of RUN_LENGTH calls."""
        return None if self.graphlrp_run_s is None else self.graphlrp_run_s / self.zennit_run_s


@dataclass
class CaseResult:
    """Everything measured on one model case."""

    case: ModelCase
    skipped: str | None = None
    lower_s: float | None = None
    graph_summary: str = ""
    forward_s: float | None = None
    gradient_s: float | None = None
    epsilon_s: float | None = None
    rules: list[RuleResult] = field(default_factory=list)
    foreign_cores: float = 0.0  # cores other processes kept busy meanwhile

    @property
    def gradient_ratio(self) -> float | None:
        """graphlrp-ε time / plain gradient time."""
        if self.epsilon_s is None or self.gradient_s is None:
            return None
        return self.epsilon_s / self.gradient_s


def relative_error(ours: Tensor, reference: Tensor) -> float:
    """``max |ours − reference| / max |reference|`` (0 when both are zero)."""
    scale = float(reference.abs().max())
    difference = float((ours - reference).abs().max())
    if scale == 0:
        return 0.0 if difference == 0 else float("inf")
    return difference / scale


def torch_forward(model: nn.Module, x: Tensor) -> Tensor:
    """torch's inference forward pass (no autograd)."""
    with torch.no_grad():
        return model(x)


def torch_gradient(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Plain gradient of the target logits w.r.t. the input (frozen parameters get no gradient)."""
    leaf = x.detach().requires_grad_()
    output = model(leaf)
    output[torch.arange(len(output)), target].sum().backward()
    return leaf.grad


def _graph_summary(graph: graphlrp.Graph) -> str:
    kinds: dict[str, int] = {}
    for block in graph.blocks:
        kinds[block.kind] = kinds.get(block.kind, 0) + 1
    blocks = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    return f"{blocks}; {graph.num_edges / 1e6:.2f} M edges, {graph.nbytes / 1e6:.1f} MB"


@dataclass
class _Setup:
    model: nn.Module  # Zennit's hooks go on this one (pruned as is)
    plain: nn.Module  # for torch's forward and gradient (no hooks, parameters frozen)
    reference: nn.Module  # effective weights baked in, for the agreement check
    reference64: nn.Module  # the same in float64
    x: Tensor
    target: Tensor
    onehot: Tensor  # the target as a one-hot mask of the output
    graph: graphlrp.Graph | None


def _set_up(case: ModelCase, result: CaseResult) -> _Setup:
    torch.manual_seed(0)
    model = case.build().eval()
    if case.prune_amount is not None:
        prune_linear_layers(model, case.prune_amount)
    x = torch.randn(case.batch, *case.input_shape)
    output = torch_forward(model, x)
    target = output.argmax(1)
    onehot = F.one_hot(target, output.shape[1]).to(x.dtype)
    plain = copy.deepcopy(model).requires_grad_(False)
    graph = None
    try:
        result.lower_s, graph = time_once(lambda: graphlrp.lower(model, x))
        result.graph_summary = _graph_summary(graph)
    except graphlrp.UnsupportedModuleError as error:
        conv = "Conv" in str(error)
        result.skipped = "convolutions not yet lowered" if conv else f"not lowered: {error}"
    zennit_model = model if case.zennit_model is None else case.zennit_model(model)
    reference = baked_copy(zennit_model)
    return _Setup(zennit_model, plain, reference, copy.deepcopy(reference).double(), x, target, onehot, graph)


def _time_rule(spec: RuleSpec, setup: _Setup, timing: Timing, baselines: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per call with the calls alternating, and in runs of RUN_LENGTH (graphlrp and
    Zennit only)."""
    fns: dict[str, Callable[[], object]] = {}
    if setup.graph is not None:
        kwargs = spec.graphlrp()
        graphlrp.explainer.explainer_for(setup.graph, **kwargs).clear()  # what earlier rules kept
        fns["graphlrp"] = lambda: graphlrp.explain(setup.graph, setup.x, target=setup.target, **kwargs)
    if baselines:
        fns["forward"] = lambda: torch_forward(setup.plain, setup.x)
        fns["gradient"] = lambda: torch_gradient(setup.plain, setup.x, setup.target)
    with Gradient(setup.model, spec.zennit()) as attributor:
        fns["zennit"] = lambda: attributor(setup.x, lambda output: output * setup.onehot)
        alternating = time_interleaved(fns, timing)
        libraries = {name: fn for name, fn in fns.items() if name in ("graphlrp", "zennit")}
        runs = Timing(warmup=0, repeats=max(2, timing.repeats // 4))
        return alternating, time_interleaved(libraries, runs, run=RUN_LENGTH)


def _agreement(spec: RuleSpec, setup: _Setup, model: nn.Module, composite: ZennitComposite) -> float:
    """Relative error of graphlrp's input relevance against Zennit's on ``model``, in its dtype."""
    dtype = next(model.parameters()).dtype
    x, onehot = setup.x.to(dtype), setup.onehot.to(dtype)
    ours = graphlrp.explain(setup.graph.to(dtype=dtype), x, target=setup.target, **spec.graphlrp()).input_relevance
    with Gradient(model, composite) as attributor:
        theirs = attributor(x, lambda output: output * onehot)[1]
    return relative_error(ours, theirs)


def _check_rule(spec: RuleSpec, setup: _Setup, pruned: bool, rule_result: RuleResult) -> None:
    """Agreement with Zennit in float32 (as timed) and float64 (free of rounding), and with Zennit
    on the pruned module as is."""
    reference = (spec.reference or spec.zennit) if pruned else spec.zennit
    rule_result.error = _agreement(spec, setup, setup.reference, reference())
    rule_result.error_f64 = _agreement(spec, setup, setup.reference64, reference())
    if pruned:
        rule_result.error_as_is = _agreement(spec, setup, setup.model, spec.zennit())


def run_case(case: ModelCase, timing: Timing) -> CaseResult:
    """Lower the case's model once, then time and check every rule (torch's baselines along with
    the first rule)."""
    result = CaseResult(case)
    setup = _set_up(case, result)
    for index, spec in enumerate(case.rules):
        times, runs = _time_rule(spec, setup, timing, baselines=index == 0)
        limit = case.targets.get(spec.name)
        rule_result = RuleResult(spec.name, times.get("graphlrp"), times["zennit"],
                                 None if limit is None else Target(limit), runs.get("graphlrp"), runs["zennit"])
        if setup.graph is not None:
            _check_rule(spec, setup, case.prune_amount is not None, rule_result)
        if index == 0:
            result.forward_s, result.gradient_s = times["forward"], times["gradient"]
        if spec is EPSILON:
            result.epsilon_s = rule_result.graphlrp_s
        result.rules.append(rule_result)
    return result


# -- the suite --------------------------------------------------------------------------------
def _mlp_targets(prune_amount: float | None, batch: int) -> tuple[dict[str, float], float | None]:
    if prune_amount is None:
        if batch != 64:
            return {}, None
        return {"ε": 0.5, "z⁺": 0.4, "αβ(2,1)": 0.3, "γ(0.25)": 0.25}, 1.2
    limit = {0.9: 0.2, 0.99: 0.05}[prune_amount]
    return {spec.name: limit for spec in MLP_RULES}, None


def model_cases(quick: bool, torchvision_sizes: tuple[int, ...] = ()) -> list[ModelCase]:
    """The MLP cases (dense, pruned 90 % and 99 %; batch 64, and batch 1 unless quick), LeNet-5, and
    ResNet-18 and MobileNetV2 at batch 1 and 8 at each of ``torchvision_sizes`` (square inputs)."""
    cases = []
    for batch in (64,) if quick else (1, 64):
        for amount in (None, 0.9, 0.99):
            targets, gradient_target = _mlp_targets(amount, batch)
            label = "dense" if amount is None else f"pruned {amount:.0%}"
            cases.append(ModelCase(f"MLP {label}, batch {batch}", mlp, (MLP_WIDTH,), batch, MLP_RULES, amount,
                                   targets, gradient_target))
    cases.append(ModelCase("LeNet-5, batch 64", lenet5, (1, 28, 28), 64, (EPSILON_PLUS_FLAT,),
                           targets={EPSILON_PLUS_FLAT.name: 0.5}))
    for size in torchvision_sizes:
        for name in ("resnet18", "mobilenet_v2"):
            for batch in (1, 8):
                cases.append(ModelCase(f"{name} {size}×{size}, batch {batch}", torchvision_model(name), (3, size, size),
                                       batch, (EPSILON_PLUS_FLAT_TWIN,), zennit_model=zennit_twin))
    return cases
