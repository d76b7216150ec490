"""graphlrp.frontends.from_torchscript: the eager rebuild of a scripted Sequential."""
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp.errors import UnsupportedModuleError
from graphlrp.frontends import from_torchscript
from graphlrp.frontends.torchscript import check_rebuild


def _model() -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    return nn.Sequential(body, nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()


def test_the_rebuild_shares_parameters_keeps_names_and_explains_as_the_eager_model():
    model = _model()
    scripted = torch.jit.script(model)
    rebuilt = from_torchscript(scripted)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert [n for n, _ in rebuilt.named_modules()] == [n for n, _ in model.named_modules()]
    for (name, ours), (_, theirs) in zip(rebuilt.named_parameters(), scripted.named_parameters()):
        assert ours.data_ptr() == theirs.data_ptr(), name
    check_rebuild(scripted, rebuilt, x)
    expected = graphlrp.explain(graphlrp.lower(model, x), x, target=1).input_relevance
    actual = graphlrp.explain(graphlrp.lower(rebuilt, x), x, target=1).input_relevance
    assert torch.equal(actual, expected)


class Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_scripted_custom_module_is_refused_naming_its_path():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 3), Custom()))
    with pytest.raises(UnsupportedModuleError, match=r"TorchScript module '1' \(Custom\) cannot be lowered"):
        from_torchscript(scripted)


def test_a_rebuild_that_computes_something_else_is_refused():
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    other = nn.Sequential(nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedModuleError, match="computes something else"):
        check_rebuild(torch.jit.script(model), other, torch.randn(4, 3))
