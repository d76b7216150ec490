"""The lowering doors: what is lowered computes what the model computes, the user's objects never change,
and every refusal is a graphlrp error.

References are independent of the lowering: autograd gradient × input (LRP-0 on piecewise-linear
networks without bias), Zennit on the same function written with distinct out-of-place modules,
the model's own forward on fresh random inputs, and bit-exact snapshots of every tensor, training
flag and hook dictionary the user passed.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from zennit import rules as zrules
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite

import graphlrp
from graphlrp import rules

#: every activation module with an ``inplace`` option, as users write them
INPLACE_MODULES: dict[str, Callable[[bool], nn.Module]] = {
    "ReLU": lambda inplace: nn.ReLU(inplace=inplace),
    "LeakyReLU": lambda inplace: nn.LeakyReLU(0.1, inplace=inplace),
    "ELU": lambda inplace: nn.ELU(inplace=inplace),
    "CELU": lambda inplace: nn.CELU(0.7, inplace=inplace),
    "SELU": lambda inplace: nn.SELU(inplace=inplace),
    "Hardtanh": lambda inplace: nn.Hardtanh(-0.5, 0.8, inplace=inplace),
    "ReLU6": lambda inplace: nn.ReLU6(inplace=inplace),
    "SiLU": lambda inplace: nn.SiLU(inplace=inplace),
    "Mish": lambda inplace: nn.Mish(inplace=inplace),
    "Hardsigmoid": lambda inplace: nn.Hardsigmoid(inplace=inplace),
    "Hardswish": lambda inplace: nn.Hardswish(inplace=inplace),
}
#: the activation types, for Zennit's ``Pass`` rule (its own Activation type misses Mish, Hardswish, ...)
ACTIVATION_TYPES = tuple(type(make(False)) for make in INPLACE_MODULES.values())
#: graphlrp rule and the Zennit rule with the same formula
RULES = {
    "epsilon": (rules.Epsilon(0.25), zrules.Epsilon(0.25)),
    "gamma": (rules.Gamma(0.25), zrules.Gamma(0.25)),
}
#: float64 agreement with Zennit (measured: at most 2e-15 on these networks)
ZENNIT_TOLERANCE = 1e-12
#: float64 agreement of the graph's forward with the model's (measured: at most 4e-16)
FORWARD_TOLERANCE = 1e-13


def _linears(sizes: list[int], seed: int, bias: bool = True) -> list[nn.Linear]:
    generator = torch.Generator().manual_seed(seed)
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layer = nn.Linear(n_in, n_out, bias=bias).double()
        with torch.no_grad():
            layer.weight.copy_(torch.randn(n_out, n_in, generator=generator, dtype=torch.float64))
            if bias:
                layer.bias.copy_(0.5 * torch.randn(n_out, generator=generator, dtype=torch.float64))
        layers.append(layer)
    return layers


def mlp(sizes: list[int], make: Callable[[bool], nn.Module], inplace: bool, seed: int = 0, bias: bool = True,
        leading: bool = False) -> nn.Sequential:
    """``[act →] Linear → act → … → Linear`` with distinct activation objects."""
    linears = _linears(sizes, seed, bias)
    layers: list[nn.Module] = [make(inplace)] if leading else []
    for linear in linears[:-1]:
        layers += [linear, make(inplace)]
    return nn.Sequential(*layers, linears[-1]).eval()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-300))


def zennit_relevance(model: nn.Module, x: torch.Tensor, target: int, rule) -> torch.Tensor:
    composite = LayerMapComposite([(ACTIVATION_TYPES, zrules.Pass()), (nn.Linear, rule)])

    def start_from_logit(output: torch.Tensor) -> torch.Tensor:
        return output * F.one_hot(torch.full((len(output),), target), output.shape[1]).to(output)

    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x.clone(), start_from_logit)
    return relevance


def gradient_times_input(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    model(x)[:, target].sum().backward()
    return (x.grad * x).detach()


def relevance(graph: graphlrp.Graph, x: torch.Tensor, rule, target: int = 0) -> torch.Tensor:
    return graphlrp.explain(graph, x, target=target, rule=rule).input_relevance


def fresh_input(width: int, seed: int, batch: int = 9) -> torch.Tensor:
    return torch.randn(batch, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- 1. in-place modules and operations ------------------------------------------------------------
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("name", sorted(INPLACE_MODULES))
def test_inplace_activation_module_gives_the_relevance_of_the_out_of_place_model(name, rule):
    make = INPLACE_MODULES[name]
    example, x = fresh_input(5, 1, batch=3), fresh_input(5, 2)
    inplace, plain = mlp([5, 7, 6, 3], make, True, seed=3), mlp([5, 7, 6, 3], make, False, seed=3)
    ours, theirs = RULES[rule]
    actual = relevance(graphlrp.lower(inplace, example), x, ours)
    assert torch.equal(actual, relevance(graphlrp.lower(plain, example), x, ours))
    assert relative_error(actual, zennit_relevance(plain, x, 0, theirs)) <= ZENNIT_TOLERANCE


@pytest.mark.parametrize("name", ["ReLU", "LeakyReLU"])
@pytest.mark.parametrize("leading", [False, True], ids=["hidden", "leading"])
def test_lrp0_of_an_inplace_piecewise_linear_network_equals_gradient_times_input(name, leading):
    make = INPLACE_MODULES[name]
    model = mlp([4, 8, 8, 3], make, True, seed=5, bias=False, leading=leading)
    twin = mlp([4, 8, 8, 3], make, False, seed=5, bias=False, leading=leading)
    x = fresh_input(4, 6)
    graph = graphlrp.lower(model, fresh_input(4, 7, batch=2))
    for target in range(3):
        expected = gradient_times_input(twin, x, target)
        assert relative_error(relevance(graph, x, rules.Epsilon(0.0), target), expected) <= 1e-12


class InplaceForms(nn.Module):
    """Every in-place spelling of an activation and an addition, in one traced forward."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.first, self.second, self.last = _linears([4, 6, 6, 3], seed=11)
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.first(x)
        if self.form == "functional":
            a = F.leaky_relu(z, 0.1, inplace=True)
        elif self.form == "method_statement":
            z.relu_()  # result not assigned: z itself changed
            a = z
        elif self.form == "torch_function":
            a = torch.relu_(z)
        elif self.form == "functional_underscore":
            a = F.elu_(z, 0.5)
        else:
            a = z.sigmoid_()
        h = self.second(a)
        h.add_(a)  # in-place residual addition
        h += z  # reads z after the in-place activation changed it
        return self.last(F.hardtanh(h, -1.5, 2.0, True))


class OutOfPlaceForms(InplaceForms):
    """:class:`InplaceForms` written out of place, with the same weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.first(x)
        a = {"functional": lambda: F.leaky_relu(z, 0.1), "method_statement": lambda: torch.relu(z),
             "torch_function": lambda: torch.relu(z), "functional_underscore": lambda: F.elu(z, 0.5),
             "method": lambda: torch.sigmoid(z)}[self.form]()
        h = self.second(a) + a + a  # z, changed in place, is a
        return self.last(F.hardtanh(h, -1.5, 2.0))


@pytest.mark.parametrize("form", ["functional", "method_statement", "torch_function", "functional_underscore",
                                  "method"])
def test_inplace_calls_in_a_traced_model_lower_to_what_they_compute(form):
    model, twin = InplaceForms(form).eval(), OutOfPlaceForms(form).eval()
    x = fresh_input(4, 12)
    with torch.no_grad():
        assert torch.allclose(model(x.clone()), twin(x), rtol=0, atol=1e-14)  # the twin is the same function
    graph = graphlrp.lower(model, fresh_input(4, 13, batch=2))
    with torch.no_grad():
        assert relative_error(graph(x), model(x.clone())) <= FORWARD_TOLERANCE
    plain = graphlrp.lower(twin, fresh_input(4, 13, batch=2))
    for rule in (rules.Epsilon(0.25), rules.Gamma(0.25)):
        assert relative_error(relevance(graph, x, rule), relevance(plain, x, rule)) <= 1e-12


class ReadsChangedInput(nn.Module):
    """An in-place activation on the input, which a later layer reads again."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = _linears([4, 3, 3], seed=21)[0], _linears([4, 3], seed=22)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x, inplace=True)
        return self.left(h) + self.right(x)  # x is relu(x) by now


def test_inplace_change_of_the_input_is_seen_by_later_reads_and_leaves_the_caller_input_alone():
    model = ReadsChangedInput()
    example = fresh_input(4, 23, batch=3)
    kept = example.clone()
    graph = graphlrp.lower(model, example)
    assert torch.equal(example, kept)
    x = fresh_input(4, 24)
    expected = model.left(torch.relu(x)) + model.right(torch.relu(x))
    assert relative_error(graph(x), expected.detach()) <= FORWARD_TOLERANCE


class ViewThenChange(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.last = _linears([4, 6, 6], seed=31)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.first(x)
        v = z.view(-1, 2, 3)
        z.relu_()
        return self.last(v.flatten(1))  # v was taken before the change and is read after it


class ChangesParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = _linears([4, 3], seed=32)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.first.weight.relu_()
        return self.first(x)


@pytest.mark.parametrize("model, message", [
    (ViewThenChange(), r"changes 'first'.*reads afterwards through 'view'"),
    (ChangesParameter(), r"changes the model's attribute 'first\.weight'"),
])
def test_inplace_operations_the_graph_cannot_express_are_refused_before_the_model_runs(model, message):
    before = snapshot(model)
    with pytest.raises(graphlrp.UnsupportedModuleError, match=message):
        graphlrp.lower(model, fresh_input(4, 33, batch=2))
    assert_unchanged(before, snapshot(model))


# -- 2. one module object used several times -------------------------------------------------------
def test_an_activation_object_used_twice_in_a_sequential_is_lowered_at_every_use():
    first, second, last = _linears([5, 6, 6, 3], seed=41)
    shared = nn.LeakyReLU(0.2)
    model = nn.Sequential(first, shared, second, shared, last).eval()
    twin = nn.Sequential(first, nn.LeakyReLU(0.2), second, nn.LeakyReLU(0.2), last).eval()
    x = fresh_input(5, 42)
    graph = graphlrp.lower(model, fresh_input(5, 43, batch=2), check=False)
    with torch.no_grad():
        assert relative_error(graph(x), twin(x)) <= FORWARD_TOLERANCE
    plain = graphlrp.lower(twin, x)
    for rule in (rules.Epsilon(0.25), rules.Gamma(0.25)):
        assert torch.equal(relevance(graph, x, rule), relevance(plain, x, rule))


class SharedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.square, self.last = _linears([5, 5, 2], seed=44)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.act(self.square(self.act(self.square(x)))))


@pytest.mark.parametrize("traced", [False, True], ids=["sequential", "traced"])
def test_a_linear_object_applied_twice_is_lowered_at_every_use(traced):
    square, last = _linears([5, 5, 2], seed=44)
    model = SharedLinear() if traced else nn.Sequential(square, nn.ReLU(), square, nn.ReLU(), last)
    twin = nn.Sequential(copy.deepcopy(square), nn.ReLU(), copy.deepcopy(square), nn.ReLU(), copy.deepcopy(last))
    x = fresh_input(5, 45)
    graph = graphlrp.lower(model.eval(), fresh_input(5, 46, batch=2), check=False)
    with torch.no_grad():
        assert relative_error(graph(x), twin(x)) <= FORWARD_TOLERANCE
    plain = graphlrp.lower(twin.eval(), x)
    for rule in (rules.Epsilon(0.25), rules.Gamma(0.25)):
        assert relative_error(relevance(graph, x, rule), relevance(plain, x, rule)) <= 1e-14


# -- 3. the user's objects never change -------------------------------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_load_state_dict_pre_hooks")


def _tensor_entry(key: tuple, tensor: torch.Tensor | None) -> tuple:
    if tensor is None:
        return (*key, None, None)
    data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).clone()
    return (*key, id(tensor), tensor.dtype, tuple(tensor.shape), tensor.requires_grad, data)


def snapshot(*objects: Any) -> list[tuple]:
    """Every tensor (its bits), module training flag and hook dictionary reachable from ``objects``."""
    state: list[tuple] = []
    for position, obj in enumerate(objects):
        if isinstance(obj, torch.Tensor):
            state.append(_tensor_entry(("argument", position), obj))
            continue
        for path, module in obj.named_modules(remove_duplicate=False):
            state.append((path, "training", module.training))
            for name in _HOOK_DICTS:
                state.append((path, name, [(key, id(hook)) for key, hook in getattr(module, name).items()]))
            for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
                state.append(_tensor_entry((path, name), tensor))
    return state


def assert_unchanged(before: list[tuple], after: list[tuple]) -> None:
    """Same entries, same flags and hooks, same tensor objects holding the same bits."""
    assert [entry[:-1] for entry in before] == [entry[:-1] for entry in after], "flags, hooks or tensors replaced"
    for old, new in zip(before, after):
        if isinstance(old[-1], torch.Tensor):
            assert torch.equal(old[-1], new[-1]), f"{old[:2]} changed"
        else:
            assert old[-1] == new[-1], f"{old[:2]} changed"


def _norm(width: int, seed: int) -> nn.BatchNorm1d:
    norm = nn.BatchNorm1d(width).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(width, generator=generator, dtype=torch.float64))
        norm.running_var.copy_(0.5 + torch.rand(width, generator=generator, dtype=torch.float64))
    return norm


class Residual(nn.Module):
    """A traced model with batch norm, dropout, an in-place activation on its input and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.lead = nn.ReLU(inplace=True)
        self.first, self.last = _linears([4, 4, 2], seed=51)
        self.norm = _norm(4, 52)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lead(x)
        return self.last(self.drop(F.relu(self.norm(self.first(h)), inplace=True)) + h)


def _sequential() -> nn.Sequential:
    first, last = _linears([4, 4, 2], seed=53)
    return nn.Sequential(nn.ReLU(inplace=True), first, _norm(4, 54), nn.ReLU(inplace=True), nn.Dropout(0.5), last)


def _with_hooks(model: nn.Module) -> nn.Module:
    for module in model.modules():
        module.register_forward_hook(lambda m, i, o: None)
        module.register_forward_pre_hook(lambda m, i: None)
    return model


def _train_roots(model: nn.Module) -> nn.Module:
    """The root and every layer in training mode, batch norm and dropout in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.Dropout)):
            module.eval()
    return model


@pytest.mark.parametrize("make", [_sequential, Residual], ids=["sequential", "traced"])
def test_successful_lowering_leaves_model_flags_hooks_and_input_bit_identical(make):
    model = _with_hooks(_train_roots(make()))
    example = fresh_input(4, 55, batch=3)
    before = snapshot(model, example)
    graph = graphlrp.lower(model, example)
    assert_unchanged(before, snapshot(model, example))
    x = fresh_input(4, 56)
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert relative_error(graph(x), reference(x.clone())) <= FORWARD_TOLERANCE


def _norm_in_training(model: nn.Module) -> None:
    next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d)).train()


def _dropout_in_training(model: nn.Module) -> None:
    next(m for m in model.modules() if isinstance(m, nn.Dropout)).train()


def _custom_forward(model: nn.Module) -> None:
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    linear.register_forward_hook(lambda m, i, o: o * 2)


FLAWS: dict[str, tuple[Callable[[nn.Module], None], type, str]] = {
    "batch norm in training": (_norm_in_training, graphlrp.InputError, r"BatchNorm1d\) is in training mode"),
    "dropout in training": (_dropout_in_training, graphlrp.InputError, r"Dropout\) is in training mode"),
    "output changed by a hook": (_custom_forward, graphlrp.LoweringMismatchError, "differs from the model's"),
}


@pytest.mark.parametrize("flaw", sorted(FLAWS))
@pytest.mark.parametrize("make", [_sequential, Residual], ids=["sequential", "traced"])
def test_failed_lowering_leaves_model_flags_hooks_and_input_bit_identical(make, flaw):
    spoil, error, message = FLAWS[flaw]
    model = _with_hooks(make().eval())
    spoil(model)
    example = fresh_input(4, 57, batch=3)
    before = snapshot(model, example)
    with pytest.raises(error, match=message):
        graphlrp.lower(model, example)
    assert_unchanged(before, snapshot(model, example))


@pytest.mark.parametrize("make", [_sequential, Residual], ids=["sequential", "traced"])
@pytest.mark.parametrize("example, error", [
    (fresh_input(5, 58, batch=2), graphlrp.InputError),
    (fresh_input(4, 58, batch=2).float(), graphlrp.InputError),
    (torch.full((2, 4), float("nan"), dtype=torch.float64), graphlrp.InputError),
], ids=["wrong width", "wrong dtype", "nan"])
def test_a_bad_example_input_leaves_model_and_input_bit_identical(make, example, error):
    model = _with_hooks(make().eval())
    before = snapshot(model, example)
    with pytest.raises(error):
        graphlrp.lower(model, example)
    assert_unchanged(before, snapshot(model, example))


class Unsupported(nn.Module):
    """Batch norm in eval mode runs first, then an operation graphlrp cannot lower."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = _norm(4, 59)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.norm(x), dim=1)


def test_an_unsupported_operation_after_running_modules_leaves_the_model_bit_identical():
    model = _with_hooks(_train_roots(Unsupported()))
    example = fresh_input(4, 60, batch=3)
    before = snapshot(model, example)
    with pytest.raises(graphlrp.UnsupportedModuleError, match="unsupported operation 'cumsum'"):
        graphlrp.lower(model, example)
    assert_unchanged(before, snapshot(model, example))


def test_the_snapshot_sees_a_change_of_running_statistics_and_of_a_flag():
    model = _sequential().eval()
    before = snapshot(model)
    model[2].train()
    model(fresh_input(4, 61, batch=3))
    with pytest.raises(AssertionError):
        assert_unchanged(before, snapshot(model))
    model[2].eval()
    with pytest.raises(AssertionError, match="changed"):
        assert_unchanged(before, snapshot(model))


# -- 4. outputs that are not one tensor ------------------------------------------------------------
class Returns(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.layer = _linears([3, 2], seed=71)[0]
        self.kind = kind

    def forward(self, x: torch.Tensor):
        y = self.layer(x)
        return {"tuple": lambda: (y, x), "list": lambda: [y], "dict": lambda: {"out": y}, "constant": lambda: 1.0,
                "attribute": lambda: self.layer.weight}[self.kind]()


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "constant", "attribute"])
def test_a_traced_model_must_return_one_tensor(kind):
    with pytest.raises(graphlrp.UnsupportedModuleError, match="must return one tensor"):
        graphlrp.lower(Returns(kind), fresh_input(3, 72, batch=2))


# -- 5. the lowering check runs on more than the example ---------------------------------------------
class PositivePart(nn.Linear):
    """A linear layer whose forward drops the negative part of its input: invisible on a positive example."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.clamp(min=0))


def test_the_lowering_check_catches_a_difference_the_example_input_does_not_show():
    model = nn.Sequential(PositivePart(4, 3).double()).eval()
    example = fresh_input(4, 81, batch=3).abs()
    graph = graphlrp.lower(model, example, check=False)
    with torch.no_grad():
        assert torch.allclose(graph(example), model(example), rtol=0, atol=1e-14)  # the example agrees
    with pytest.raises(graphlrp.LoweringMismatchError, match="on a random input"):
        graphlrp.lower(model, example)


@pytest.mark.parametrize("seed", range(4))
def test_lowered_models_compute_the_model_on_fresh_random_inputs(seed):
    models = [mlp([5, 6, 4, 3], INPLACE_MODULES["SiLU"], True, seed=seed, leading=True), Residual().eval(),
              InplaceForms("method_statement").eval(), SharedLinear().eval()]
    for model in models:
        width = next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features
        graph = graphlrp.lower(model, fresh_input(width, 100 + seed, batch=1))
        x = 3 * fresh_input(width, 200 + seed, batch=32)
        with torch.no_grad():
            assert relative_error(graph(x), model(x.clone())) <= FORWARD_TOLERANCE


# -- 6. arguments: graphlrp's errors, naming what is wrong ---------------------------------------------
def _model() -> nn.Sequential:
    return mlp([3, 4, 2], INPLACE_MODULES["ReLU"], False)


def _huge() -> nn.Sequential:
    layer = nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.weight.fill_(1e200)
    return nn.Sequential(layer)


ARGUMENTS = [
    ("model None", lambda: (None, fresh_input(3, 1)), {}, graphlrp.ArgumentTypeError, "model must be a torch.nn.Module"),
    ("example None", lambda: (_model(), None), {}, graphlrp.ArgumentTypeError, "example_input must be a torch.Tensor"),
    ("example list", lambda: (_model(), [[0.0, 1.0, 2.0]]), {}, graphlrp.ArgumentTypeError, "got list"),
    ("vector", lambda: (_model(), torch.zeros(3, dtype=torch.float64)), {}, graphlrp.InputError, "unsqueeze"),
    ("empty", lambda: (_model(), torch.zeros(0, 3, dtype=torch.float64)), {}, graphlrp.InputError, "empty batch"),
    ("nan", lambda: (_model(), torch.tensor([[0.0, float("nan"), 1.0]], dtype=torch.float64)), {},
     graphlrp.InputError, "NaN or inf"),
    ("inf", lambda: (_model(), torch.tensor([[0.0, float("inf"), 1.0]], dtype=torch.float64)), {},
     graphlrp.InputError, "NaN or inf"),
    ("int", lambda: (_model(), torch.ones(2, 3, dtype=torch.int64)), {}, graphlrp.InputError, "floating point"),
    ("dtype", lambda: (_model(), torch.ones(2, 3)), {}, graphlrp.InputError, "dtype torch.float32"),
    ("overflowing output", lambda: (_huge(), torch.full((2, 3), 1e200, dtype=torch.float64)), {},
     graphlrp.InputError, "not finite"),
    ("block_kind", lambda: (_model(), fresh_input(3, 1)), {"block_kind": "csr"}, graphlrp.InputError,
     "unknown block_kind 'csr'"),
    ("block_kind None", lambda: (_model(), fresh_input(3, 1)), {"block_kind": None}, graphlrp.InputError,
     "unknown block_kind None"),
    ("max_pool", lambda: (_model(), fresh_input(3, 1)), {"max_pool": "max"}, graphlrp.InputError,
     "unknown max_pool mode 'max'"),
    ("check", lambda: (_model(), fresh_input(3, 1)), {"check": "yes"}, graphlrp.ArgumentTypeError,
     "check must be True or False"),
    ("max_edges type", lambda: (_model(), fresh_input(3, 1)), {"max_edges": "10"}, graphlrp.ArgumentTypeError,
     "max_edges must be an int"),
    ("max_bytes negative", lambda: (_model(), fresh_input(3, 1)), {"max_bytes": -1}, graphlrp.InputError,
     "max_bytes must be >= 0"),
    ("two inputs", lambda: (TwoInputs(), fresh_input(3, 1)), {}, graphlrp.UnsupportedModuleError,
     "must take one input tensor; its forward takes 2"),
    ("batch statistics", lambda: (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False))
                                  .double().eval(), fresh_input(3, 1)), {}, graphlrp.UnsupportedModuleError,
     "no running statistics"),
    ("functional dropout in training", lambda: (FunctionalDropout(), fresh_input(3, 1)), {}, graphlrp.InputError,
     "dropout in training mode"),
]


class FunctionalDropout(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.5, training=True)


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


@pytest.mark.parametrize("name, make, options, error, message", ARGUMENTS, ids=[a[0] for a in ARGUMENTS])
def test_bad_arguments_raise_graphlrp_errors_naming_the_problem(name, make, options, error, message):
    model, example = make()
    watched = [o for o in (model, example) if isinstance(o, (nn.Module, torch.Tensor))]
    before = snapshot(*watched)
    with pytest.raises(error, match=message) as raised:
        graphlrp.lower(model, example, **options)
    assert isinstance(raised.value, graphlrp.GraphLRPError)
    assert_unchanged(before, snapshot(*watched))


def test_an_example_that_requires_grad_or_is_not_contiguous_is_accepted_and_left_alone():
    model = _model()
    for example in (fresh_input(3, 91).requires_grad_(True), fresh_input(7, 92)[:, 2:5]):
        before = snapshot(example)
        graph = graphlrp.lower(model, example)
        assert_unchanged(before, snapshot(example))
        assert example.grad is None
        with torch.no_grad():
            assert relative_error(graph(example.detach()), model(example)) <= FORWARD_TOLERANCE


class FunctionalLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 3, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(F.linear(x, self.weight), 0.1)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(3, 2), nn.LeakyReLU(0.1)).double(), FunctionalLinear],
                         ids=["sequential", "functional"])
def test_the_graph_does_not_follow_later_changes_of_the_model(make):
    model = make().eval()
    x = fresh_input(3, 93)
    graph = graphlrp.lower(model, x)
    before = graph(x)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(-3.0)
    for module in model.modules():
        if isinstance(module, nn.LeakyReLU):
            module.negative_slope = 0.5
    assert torch.equal(graph(x), before)
