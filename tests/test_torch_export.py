"""Programs saved with ``torch.export`` lower from their ATen graph and explain like the eager model."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from zennit import composites as zcomposites
from zennit import rules as zrules
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.layer import Sum

import graphlrp
from graphlrp.errors import InputError, UnsupportedModuleError

from test_cnn import build
from test_zennit_agreement import FLOAT64, assert_close, zennit_relevance

#: Zennit's merged batch norm divides by √(1 + eps) with eps = 1e-12 (``build``): 6.1e-13 measured
AGAINST_ZENNIT_BATCH_NORM = 2e-12


def saved_and_loaded(model: nn.Module, x: torch.Tensor, path, **options) -> torch.export.ExportedProgram:
    torch.export.save(torch.export.export(model, (x,), **options), path)
    return torch.export.load(path)


@pytest.mark.parametrize("name", ["lenet", "residual", "concatenation"])
def test_exported_program_explains_like_zennit_on_the_eager_model(name, tmp_path):
    model, twin, x = build(name)
    program = saved_and_loaded(model, x, tmp_path / "model.pt2")
    graph = graphlrp.lower(program, x)
    other = torch.randn(3, *x.shape[1:], dtype=x.dtype)  # a batch size the program was not exported for
    assert torch.allclose(graph(other), model(other), rtol=0, atol=1e-12)
    target = torch.tensor([0, 1, 2, 1])
    theirs = zcomposites.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    theirs.layer_map = [(Sum, zrules.Norm())] + theirs.layer_map
    expected = zennit_relevance(twin, x, target, theirs)
    actual = graphlrp.explain(graph, x, target=target, composite=graphlrp.composites.EpsilonPlusFlat()).input_relevance
    assert_close(actual, expected, AGAINST_ZENNIT_BATCH_NORM)


def test_in_place_activations_and_folded_batch_norm_of_an_exported_program():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, eps=1e-12), nn.ReLU6(inplace=True), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5), nn.SiLU(inplace=True), nn.Linear(5, 2)).double().eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].running_mean.normal_(0, 0.5)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    graph = graphlrp.lower(torch.export.export(model, (x,)), x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert [level.type_name for level in graph.levels] == ["input", "Conv2d", "Linear", "Linear"]  # folded, merged
    expected = graphlrp.explain(graphlrp.lower(model, x), x, target=1, rule=graphlrp.rules.Epsilon(1e-3))
    actual = graphlrp.explain(graph, x, target=1, rule=graphlrp.rules.Epsilon(1e-3))
    assert_close(actual.input_relevance, expected.input_relevance, FLOAT64)


def test_program_with_a_dynamic_batch_lowers_at_any_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    graph = graphlrp.lower(program, x[:2])
    assert torch.allclose(graph(x), model(x), rtol=0, atol=1e-12)


def test_example_of_another_shape_than_exported_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    program = torch.export.export(model, (torch.randn(1, 1, 6, 6),))
    with pytest.raises(InputError, match=r"exported for \(1, 6, 6\)"):
        graphlrp.lower(program, torch.randn(1, 1, 7, 7))


def test_unsupported_aten_operator_is_named():
    model = nn.Sequential(nn.ConvTranspose2d(1, 2, 3), nn.Flatten()).eval()
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(UnsupportedModuleError, match="conv_transpose2d"):
        graphlrp.lower(torch.export.export(model, (x,)), x)


def test_command_line_explains_a_saved_program(tmp_path, capsys):
    from graphlrp.cli import EXIT_OK, main

    model, _, x = build("lenet")
    model, x = model.float(), x.float()
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "lenet.pt2")
    torch.save(x, tmp_path / "x.pt")
    code = main(["explain", str(tmp_path / "lenet.pt2"), str(tmp_path / "x.pt"), "--out", str(tmp_path / "r.pt"),
                 "--rule", "epsilon", "--quiet"])
    assert code == EXIT_OK, capsys.readouterr().err
    graph = graphlrp.lower(model, x)
    expected = graphlrp.explain(graph, x, target=graph(x).argmax(1), rule=graphlrp.rules.Epsilon()).input_relevance
    torch.testing.assert_close(torch.load(tmp_path / "r.pt"), expected)


def test_command_line_refuses_a_broken_program_file_saying_what_it_is(tmp_path, capsys):
    import zipfile

    from graphlrp.cli import EXIT_FILE, main

    with zipfile.ZipFile(tmp_path / "broken.pt2", "w") as archive:
        archive.writestr("broken/archive_format", "pt2")
    torch.save(torch.randn(2, 3), tmp_path / "x.pt")
    code = main(["explain", str(tmp_path / "broken.pt2"), str(tmp_path / "x.pt"), "--out", str(tmp_path / "r.pt")])
    assert code == EXIT_FILE
    assert f"cannot read {tmp_path / 'broken.pt2'} as a torch.export program" in capsys.readouterr().err
