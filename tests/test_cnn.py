"""Convolutions, pooling, batch norm, residual additions and concatenation: forward and Zennit agreement."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from zennit import rules as zrules
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import LayerMapComposite
from zennit.layer import Sum
from zennit.types import Activation, AvgPool, Convolution

import graphlrp
from graphlrp import rules

from test_zennit_agreement import assert_close, zennit_relevance


def randomize_batch_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.3)
                module.bias.normal_(0, 0.3)


class LeNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3),
        )


class Residual(nn.Module):
    """A residual block with batch norms.

    The batch norms' ``eps`` is tiny because Zennit's merged batch norm still divides by
    ``√(1 + eps)`` (a relative error of eps/2 per batch norm, 5e-6 at the default eps).
    """

    def __init__(self, zennit_sum: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-12), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-12))
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
        self.sum = Sum() if zennit_sum else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.branch(x)
        total = self.sum(torch.stack([x, y], dim=-1)) if self.sum is not None else x + y
        return self.head(self.relu(total))


class Concatenation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(5, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def build(name: str, seed: int = 0):
    """(graphlrp model, zennit twin with the same weights, input)."""
    torch.manual_seed(seed)
    if name == "lenet":
        model, x = LeNet(), torch.randn(4, 1, 12, 12)
        twin = model
    elif name == "residual":
        model, x = Residual(), torch.randn(4, 2, 6, 6)
        randomize_batch_norms(model)
        twin = Residual(zennit_sum=True)
        twin.load_state_dict(model.state_dict())
    else:
        model, x = Concatenation(), torch.randn(4, 1, 8, 8)
        twin = model
    return model.double().eval(), twin.double().eval(), x.double()


def cnn_rule_pairs():
    return [
        (rules.Epsilon(1e-6), zrules.Epsilon(1e-6)),
        (rules.ZPlus(), zrules.ZPlus()),
        (rules.AlphaBeta(2, 1), zrules.AlphaBeta(2, 1)),
        (rules.Gamma(0.25), zrules.Gamma(0.25)),
        (rules.WSquare(), zrules.WSquare()),
        (rules.Flat(), zrules.Flat()),
        (rules.ZBox(-3.0, 3.0), zrules.ZBox(-3.0, 3.0)),
    ]


def zennit_composite(rule):
    return LayerMapComposite(
        [(Activation, zrules.Pass()), (Sum, zrules.Norm()), (AvgPool, zrules.Norm()),
         (Convolution, rule), (nn.Linear, rule)],
        canonizers=[SequentialMergeBatchNorm()],
    )


@pytest.mark.parametrize("name", ["lenet", "residual", "concatenation"])
def test_cnn_rules_match_zennit(name):
    model, twin, x = build(name)
    target = torch.tensor([0, 1, 2, 1])
    graph = graphlrp.lower(model, x)
    for ours, theirs in cnn_rule_pairs():
        expected = zennit_relevance(twin, x, target, zennit_composite(theirs))
        actual = graphlrp.explain(graph, x, target=target, rule=ours).input_relevance
        assert_close(actual, expected)


@pytest.mark.parametrize("name", ["lenet", "residual", "concatenation"])
def test_cnn_composites_match_zennit(name):
    from zennit import composites as zcomposites

    model, twin, x = build(name, seed=1)
    target = torch.tensor([2, 1, 0, 2])
    graph = graphlrp.lower(model, x)
    for ours, theirs in [
        (graphlrp.composites.EpsilonPlusFlat(), zcomposites.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])),
        (graphlrp.composites.EpsilonAlpha2Beta1(), zcomposites.EpsilonAlpha2Beta1(canonizers=[SequentialMergeBatchNorm()])),
        (graphlrp.composites.EpsilonGammaBox(-3.0, 3.0),
         zcomposites.EpsilonGammaBox(-3.0, 3.0, canonizers=[SequentialMergeBatchNorm()])),
    ]:
        if name == "residual":  # Zennit's presets need the Sum module mapped explicitly
            theirs.layer_map = [(Sum, zrules.Norm())] + theirs.layer_map
        expected = zennit_relevance(twin, x, target, theirs)
        assert_close(graphlrp.explain(graph, x, target=target, composite=ours).input_relevance, expected)


@pytest.mark.parametrize("name", ["residual", "concatenation"])
def test_conservation_through_residuals_and_concatenation(name):
    model, _, x = build(name, seed=2)
    target = torch.tensor([0, 1, 2, 0])
    tiny = rules.Epsilon(1e-12, zero_bias=True)
    composite = graphlrp.Composite(by_type={"sum": rules.Norm(1e-12), nn.AdaptiveAvgPool2d: rules.Norm(1e-12)},
                                   default=tiny)
    explanation = graphlrp.explain(graphlrp.lower(model, x), x, target=target, composite=composite)
    logit = explanation.output.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(explanation.input_relevance.sum((1, 2, 3)), logit, rtol=1e-9, atol=0)


def test_residual_sum_splits_relevance_between_branches():
    model, _, x = build("residual", seed=3)
    graph = graphlrp.lower(model, x)
    sums = [l for l in graph.levels if l.layer_type == "sum"]
    assert len(sums) == 1 and len(graph.incoming[sums[0].index]) == 2
    assert not any(isinstance(l.layer_type, type) and issubclass(l.layer_type, nn.BatchNorm2d) for l in graph.levels)
    explanation = graphlrp.explain(graph, x, target=0, rule=rules.Epsilon(1e-12, zero_bias=True))
    balance = next(b for b in explanation.conservation() if b.level == sums[0].index)
    assert repr(balance.rule) == "Norm(epsilon=1e-06)"
    assert bool((balance.bias == 0).all() and (balance.dropped == 0).all())
    torch.testing.assert_close(balance.relevance_out + balance.stabilizer, balance.relevance_in, rtol=1e-12, atol=1e-15)
    assert bool((balance.stabilizer.abs() <= 1e-4 * balance.relevance_in.abs()).all())
    # each branch receives its share R_j · branch_j / (x_j + y_j) of every sum node's relevance
    level = sums[0]
    trace_inputs = [explanation.level_relevance(level.index).reshape(len(x), -1)]
    x_part, y_part = (graphlrp.propagate.run_forward(graph, graphlrp.workspace.Workspace(), x).activations[b.src] for b in graph.incoming[level.index])
    z = x_part + y_part
    share = trace_inputs[0] / (z + 1e-6 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))
    src, dst, _ = graph.edges()
    messages = explanation.edge_relevance(0)
    into_sum = (dst >= level.offset) & (dst < level.offset + level.size)
    expected = torch.cat([x_part[0] * share[0], y_part[0] * share[0]])
    torch.testing.assert_close(messages[into_sum], expected, rtol=1e-10, atol=1e-14)


CONV_CASES = [
    dict(cls=nn.Conv2d, c_in=4, c_out=6, kernel=3, stride=1, padding=1, dilation=1, groups=1, size=7),
    dict(cls=nn.Conv2d, c_in=4, c_out=6, kernel=3, stride=2, padding=0, dilation=1, groups=2, size=9),
    dict(cls=nn.Conv2d, c_in=3, c_out=6, kernel=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=3, size=8),
    dict(cls=nn.Conv1d, c_in=2, c_out=4, kernel=5, stride=2, padding=2, dilation=1, groups=1, size=11),
    dict(cls=nn.Conv1d, c_in=4, c_out=4, kernel=3, stride=1, padding=3, dilation=3, groups=4, size=10),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_convolution_forward_edges_and_relevance(case):
    torch.manual_seed(0)
    conv = case["cls"](case["c_in"], case["c_out"], case["kernel"], case["stride"], case["padding"], case["dilation"],
                       case["groups"]).double()
    shape = (case["size"],) * (2 if case["cls"] is nn.Conv2d else 1)
    x = torch.randn(3, case["c_in"], *shape, dtype=torch.float64)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).eval()
    graph = graphlrp.lower(model, x)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-10, atol=1e-12)
    # the listed edges are the convolution: a dense matrix built from them reproduces it
    src, dst, weight = graph.blocks[0].edges()
    dense = torch.zeros(graph.blocks[0].n_dst, graph.blocks[0].n_src, dtype=torch.float64)
    dense.index_put_((dst, src), weight, accumulate=True)
    assert len(src) == graph.blocks[0].num_edges == int((dense != 0).sum())
    torch.testing.assert_close(x.reshape(3, -1) @ dense.T + conv.bias.repeat_interleave(dense.shape[0] // case["c_out"]),
                               conv(x).reshape(3, -1).detach(), rtol=1e-10, atol=1e-12)
    # and relevance through them equals the dense ε formula on that matrix
    explanation = graphlrp.explain(graph, x, output_relevance=torch.ones_like(graph(x)), rule=rules.Epsilon(0.1))
    z = x.reshape(3, -1) @ dense.T + conv.bias.repeat_interleave(dense.shape[0] // case["c_out"])
    expected = x.reshape(3, -1) * ((1 / (z + 0.1 * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))) @ dense)
    torch.testing.assert_close(explanation.input_relevance.reshape(3, -1), expected.detach(), rtol=1e-9, atol=1e-12)
    # flat: every edge weighs one (same kernel for every channel; stride-1 convolutions sum the
    # channels before convolving), relevance split equally over each node's incoming edges
    flat = graphlrp.explain(graph, x, output_relevance=torch.ones_like(graph(x)), rule=rules.Flat())
    ones = (dense != 0).to(dense.dtype)
    expected = (1 / (ones.sum(1) + 1e-6)) @ ones
    torch.testing.assert_close(flat.input_relevance.reshape(3, -1), expected.expand(3, -1), rtol=1e-9, atol=1e-12)


def test_pooling_and_unfused_batch_norm_forward():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4),  # after a ReLU: not foldable
        nn.MaxPool2d(3, stride=2, padding=1), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(), nn.Linear(24, 5),
        nn.BatchNorm1d(5),  # folded into the Linear
    )
    randomize_batch_norms(model)
    model = model.double().eval()
    x = torch.randn(3, 2, 9, 9, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-10, atol=1e-12)
    types = [l.layer_type for l in graph.levels]
    assert nn.BatchNorm2d in types and nn.BatchNorm1d not in types


def test_max_pool_winner_takes_all_and_proportional():
    x = torch.tensor([[[[1.0, 3.0], [2.0, 0.5]]]], dtype=torch.float64)
    model = nn.Sequential(nn.MaxPool2d(2), nn.Flatten())
    winner = graphlrp.explain(graphlrp.lower(model, x), x, target=0)
    torch.testing.assert_close(winner.input_relevance, torch.tensor([[[[0.0, 3.0], [0.0, 0.0]]]], dtype=torch.float64))
    proportional = graphlrp.explain(graphlrp.lower(model, x, max_pool="proportional"), x, target=0)
    torch.testing.assert_close(proportional.input_relevance, 3.0 * x / x.sum(), rtol=1e-5, atol=0)
    messages = winner.edge_relevance(0)
    torch.testing.assert_close(messages, torch.tensor([0.0, 3.0, 0.0, 0.0], dtype=torch.float64))


def test_functional_ops_and_permute_through_fx():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 2, 3, 3))
            self.fc = nn.Linear(3 * 3 * 3, 4)

        def forward(self, x):
            x = F.relu(F.conv2d(x, self.weight, padding=1))
            x = F.max_pool2d(x, 2)
            x = x.permute(0, 2, 3, 1)
            x = torch.flatten(x, 1)
            return self.fc(x) + 0.5

    torch.manual_seed(2)
    model = Functional().double().eval()
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model(x), rtol=1e-10, atol=1e-12)
    explanation = graphlrp.explain(graph, x, target=1, rule=rules.Epsilon(1e-12, zero_bias=True))
    src, _, _ = graph.edges()
    outgoing = torch.zeros(graph.num_nodes, dtype=torch.float64).index_add_(0, src, explanation.edge_relevance(0))
    has = torch.zeros(graph.num_nodes, dtype=torch.bool)
    has[src] = True
    torch.testing.assert_close(outgoing[has], explanation.node_relevance[0, has], rtol=1e-9, atol=1e-12)


def test_untraceable_model_and_unsupported_op_are_named():
    class Branching(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(graphlrp.UnsupportedModuleError, match="traceable by torch.fx"):
        graphlrp.lower(Branching(), torch.randn(2, 3))

    class Accumulating(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.cumsum(self.fc(x), 1)

    with pytest.raises(graphlrp.UnsupportedModuleError, match=r"unsupported operation 'cumsum' at node 'cumsum'"):
        graphlrp.lower(Accumulating(), torch.randn(2, 3))


def test_memory_guard_refuses_before_allocating():
    model = nn.Sequential(nn.Linear(300, 400), nn.ReLU(), nn.Linear(400, 10))
    x = torch.randn(2, 300)
    with pytest.raises(graphlrp.GraphTooLargeError, match=r"124,000 edges\) would need .* above the budget of 100.0 kB"):
        graphlrp.lower(model, x, max_bytes=100_000)
    with pytest.raises(graphlrp.GraphTooLargeError, match=r"more edges than max_edges=1,000"):
        graphlrp.lower(model, x, max_edges=1000)


def test_implicit_convolution_edges_are_cheap_to_hold_and_guarded_when_listed():
    """A wide convolution holds only its kernel; listing its 10⁹ edges is refused up front."""
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 2))
    x = torch.randn(1, 64, 128, 128)
    graph = graphlrp.lower(model, x)
    assert graph.num_edges > 5 * 10**8 and graph.nbytes < 10**7  # explicit edges: > 7 GB
    with pytest.raises(graphlrp.GraphTooLargeError, match=r"listing .* edges would need .* above the budget"):
        graph.edges(max_bytes=10**9)
    explanation = graphlrp.explain(graph, x, target=1)
    assert explanation.input_relevance.shape == x.shape
    with pytest.raises(graphlrp.GraphTooLargeError, match=r"edge relevance of 1 sample"):
        explanation.edge_relevance(0, max_bytes=10**9)


POOLINGS = [
    # (pool, input shape (C, *spatial)): windows inside the input take the offset-by-offset path
    (nn.MaxPool1d(3, stride=2), (3, 11)),
    (nn.MaxPool2d(2), (4, 8, 6)),
    (nn.MaxPool2d(3, stride=1, dilation=2), (2, 9, 7)),
    (nn.MaxPool2d((2, 3), stride=(1, 2)), (3, 7, 9)),
    (nn.MaxPool3d(2), (2, 4, 6, 4)),
    (nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 7)),  # padding: torch's pooling
    (nn.MaxPool2d(2, ceil_mode=True), (2, 7, 5)),  # windows past the edge: torch's pooling
]


@pytest.mark.parametrize("pool, shape", POOLINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_pool_winners_are_torchs_first_maximum_with_ties(pool, shape, dtype):
    generator = torch.Generator().manual_seed(4)
    # few distinct values, half of them zero after the ReLU: most windows hold ties
    x = torch.randint(-3, 3, (5, *shape), generator=generator).to(dtype).relu()
    graph = graphlrp.lower(nn.Sequential(pool, nn.Flatten()), x)
    block = graph.blocks[0]
    functional = {2: F.max_pool1d, 3: F.max_pool2d, 4: F.max_pool3d}[len(shape)]
    _, expected = functional(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
                             return_indices=True)
    assert block._windows_inside() == (pool.padding in (0, (0, 0)) and not pool.ceil_mode)  # both paths covered
    winners = block.prepare(x.reshape(len(x), -1))
    assert torch.equal(winners, expected.reshape(len(x), shape[0], -1))
    torch.testing.assert_close(graph(x), pool(x).flatten(1), rtol=0, atol=0)
