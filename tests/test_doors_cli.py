"""The command line's and the plots' doors: exit codes by error class, no NaN written, unsafe files refused.

Most commands run in-process through :func:`graphlrp.cli.main` (fast); two run as ``python -m
graphlrp`` to see what a shell sees (no traceback without ``--debug``), and one imports graphlrp
with matplotlib hidden.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import analysis, cli, errors, evaluation, export, plot, rules
from graphlrp.cli import EXIT_ERROR, EXIT_FILE, EXIT_MODEL, EXIT_OK, EXIT_USAGE, exit_code, main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FACTORY_SOURCE = '''
import torch
import torch.nn as nn


def make64():
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
'''


class Touches:
    """Unpickling this object creates ``marker``: a stand-in for a file that runs code when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def make_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A directory with models and inputs, good and bad."""
    root = tmp_path_factory.mktemp("doors")
    mlp = make_mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(mlp).save(str(root / "mlp.pt"))
        torch.jit.script(make_cnn()).save(str(root / "cnn.pt"))
    torch.save(mlp.state_dict(), root / "state_dict.pt")
    torch.save(mlp, root / "pickled_module.pt")
    with (root / "plain.pkl.pt").open("wb") as file:
        pickle.dump({"weight": [1.0, 2.0]}, file)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(7, 6, dtype=torch.float64, generator=generator)
    np.save(root / "x.npy", x.numpy())
    nan = x.clone()
    nan[5, 2] = float("nan")
    np.save(root / "x_nan_sample5.npy", nan.numpy())
    huge = x.clone()
    huge[4, 0] = 1e39  # finite in float64, inf in the model's float32
    np.save(root / "x_huge_sample4.npy", huge.numpy())
    np.save(root / "x_1d.npy", np.zeros(6))
    np.save(root / "x_empty.npy", np.zeros((0, 6)))
    np.save(root / "x_5_features.npy", np.zeros((3, 5)))
    np.save(root / "x_complex.npy", np.ones((3, 6), dtype=np.complex64))
    torch.save({"x": x}, root / "x_dict.pt")
    torch.save(torch.rand(3, 1, 6, 6, generator=generator), root / "images.pt")
    (root / "factory.py").write_text(FACTORY_SOURCE)
    return root


def run_main(root: Path, monkeypatch, capsys, argv: list[str]) -> tuple[int, list[str]]:
    """``main(argv)`` in ``root``: the exit code and the lines written to stderr."""
    monkeypatch.chdir(root)
    code = main(argv)
    return code, capsys.readouterr().err.splitlines()


# -- the table of exit codes ----------------------------------------------------------------------
ERROR_CODES = [
    (errors.FileFormatError("x"), EXIT_FILE),
    (errors.InputError("x"), EXIT_MODEL),
    (errors.IndexOutOfRangeError("x"), EXIT_MODEL),
    (errors.UnsupportedModuleError("x"), EXIT_MODEL),
    (errors.NumericRangeError("x"), EXIT_MODEL),
    (errors.GraphTooLargeError("x"), EXIT_MODEL),
    (errors.LoweringMismatchError("x"), EXIT_MODEL),
    (errors.RuleParameterError("x"), EXIT_MODEL),
    (errors.CycleError([1, 2]), EXIT_MODEL),
    (errors.ArgumentTypeError("x"), EXIT_ERROR),
    (OSError("x"), EXIT_FILE),
    (KeyError("x"), EXIT_ERROR),
]


@pytest.mark.parametrize("error, code", ERROR_CODES, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v)
def test_exit_code_follows_the_error_class(error, code):
    assert exit_code(error) == code


def test_exit_code_of_a_subclass_is_its_nearest_listed_class():
    class Narrower(errors.FileFormatError):
        pass

    assert exit_code(Narrower("x")) == EXIT_FILE  # not EXIT_MODEL, though a ValueError as well


@pytest.mark.parametrize("error, code", [pair for pair in ERROR_CODES if isinstance(pair[0], errors.GraphLRPError)],
                         ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v)
def test_a_library_error_leaves_with_its_code_and_one_line(root, monkeypatch, capsys, error, code):
    def failing_explain(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "explain", failing_explain)
    result, err = run_main(root, monkeypatch, capsys, ["paths", "mlp.pt", "x.npy", "--sample", "3"])
    assert result == code
    assert len(err) == 1 and err[0].startswith("graphlrp: error: cannot explain sample 3: ")


def test_an_unexpected_error_is_one_line_without_debug_and_a_traceback_with_it(root, monkeypatch, capsys):
    def buggy_explain(*args, **kwargs):
        raise KeyError("deep inside")

    monkeypatch.setattr(cli, "explain", buggy_explain)
    code, err = run_main(root, monkeypatch, capsys, ["paths", "mlp.pt", "x.npy"])
    assert code == EXIT_ERROR
    assert len(err) == 1 and "unexpected error" in err[0] and "KeyError" in err[0] and "--debug" in err[0]
    for argv in (["--debug", "paths", "mlp.pt", "x.npy"], ["paths", "mlp.pt", "x.npy", "--debug"]):
        code, err = run_main(root, monkeypatch, capsys, argv)
        assert code == EXIT_ERROR
        assert err[0].startswith("Traceback") and "buggy_explain" in "\n".join(err)
        assert err[-1].startswith("graphlrp: error: unexpected error")


# -- shapes: one code everywhere; files of another kind -------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["explain", "mlp.pt", "x_1d.npy", "--out", "r.npy"], "got shape (6,)"),
    (["explain", "mlp.pt", "x_empty.npy", "--out", "r.npy"], "got shape (0, 6)"),
    (["explain", "mlp.pt", "x_5_features.npy", "--out", "r.npy"], "cannot lower the model"),
    (["plot", "mlp.pt", "x.npy", "--out", "p.png"], "plot needs image-shaped inputs"),
])
def test_inputs_of_the_wrong_shape_exit_4(root, monkeypatch, capsys, argv, message):
    code, err = run_main(root, monkeypatch, capsys, argv)
    assert code == EXIT_MODEL
    assert len(err) == 1 and message in err[0]
    assert not (root / "r.npy").exists() and not (root / "p.png").exists()


@pytest.mark.parametrize("inputs, message", [
    ("x_dict.pt", "x_dict.pt holds a dict, not a tensor"),
    ("x_complex.npy", "holds complex numbers"),
])
def test_inputs_that_are_not_real_tensors_exit_3(root, monkeypatch, capsys, inputs, message):
    code, err = run_main(root, monkeypatch, capsys, ["explain", "mlp.pt", inputs, "--out", "r.npy"])
    assert code == EXIT_FILE
    assert len(err) == 1 and message in err[0]


# -- nothing that is not finite goes in or out ----------------------------------------------------
@pytest.mark.parametrize("inputs, sample", [("x_nan_sample5.npy", 5), ("x_huge_sample4.npy", 4)])
def test_a_sample_not_finite_in_a_later_batch_exits_4_naming_it(root, monkeypatch, capsys, inputs, sample):
    code, err = run_main(root, monkeypatch, capsys, ["explain", "mlp.pt", inputs, "--out", "r.npy", "--batch-size", "2"])
    assert code == EXIT_MODEL
    assert len(err) == 1 and f"{inputs}: sample(s) {sample} hold NaN or inf" in err[0]
    assert not (root / "r.npy").exists()


def test_epsilon_beyond_float32_is_refused_and_fits_a_float64_model(root, monkeypatch, capsys):
    code, err = run_main(root, monkeypatch, capsys, ["explain", "mlp.pt", "x.npy", "--out", "r32.npy",
                                                     "--epsilon", "1e300"])
    assert code == EXIT_USAGE
    assert err == ["graphlrp: error: --epsilon 1e+300 is beyond the range of the model's torch.float32 "
                   "(largest 3.403e+38)"]
    assert not (root / "r32.npy").exists()
    code, _ = run_main(root, monkeypatch, capsys, ["explain", "factory.py:make64", "x.npy", "--out", "r64.npy",
                                                   "--epsilon", "1e300", "--quiet"])
    assert code == EXIT_OK
    relevance = torch.from_numpy(np.load(root / "r64.npy"))
    sys.modules.pop("_graphlrp_model_factory", None)
    namespace: dict = {}
    exec(FACTORY_SOURCE, namespace)
    model = namespace["make64"]().eval()
    x = torch.from_numpy(np.load(root / "x.npy"))
    graph = graphlrp.lower(model, x)
    expected = graphlrp.explain(graph, x, target=graph(x).argmax(1), rule=rules.Epsilon(1e300)).input_relevance
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)


def test_a_bound_that_is_not_finite_is_a_usage_error(root, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(root, monkeypatch, capsys, ["paths", "mlp.pt", "x.npy", "--rule", "zbox", "--low", "nan"])
    assert exit_info.value.code == EXIT_USAGE
    assert "argument --low: must be a finite number, got nan" in capsys.readouterr().err


@pytest.mark.parametrize("argv, written", [
    (["explain", "mlp.pt", "x.npy", "--out", "nan.npy", "--batch-size", "3"], "nan.npy"),
    (["explain", "mlp.pt", "x.npy", "--out", "nan.pt"], "nan.pt"),
    (["paths", "mlp.pt", "x.npy", "--json"], None),
    (["circuit", "mlp.pt", "x.npy", "--edges", "nan.json", "--draw", "nan.png"], "nan.json"),
    (["plot", "cnn.pt", "images.pt", "--out", "nan_heat.png"], "nan_heat.png"),
])
def test_relevance_that_is_not_finite_is_never_written(root, monkeypatch, capsys, argv, written):
    real_explain = cli.explain

    def explain_with_nan(graph, x, **kwargs):
        explanation = real_explain(graph, x, **kwargs)
        explanation.node_relevance[-1, 0] = float("nan")  # the last sample's first input
        return explanation

    monkeypatch.setattr(cli, "explain", explain_with_nan)
    code, err = run_main(root, monkeypatch, capsys, argv)
    assert code == EXIT_MODEL
    assert len(err) == 1 and "is not finite (NaN or inf)" in err[0] and "nothing is written" in err[0]
    assert written is None or not (root / written).exists()
    assert "rank" not in capsys.readouterr().out


# -- model files: say what they must be, unpickle nothing -----------------------------------------
@pytest.mark.parametrize("model, kind", [
    ("state_dict.pt", "it is a state_dict saved by torch.save"),
    ("pickled_module.pt", "it is an object pickled by torch.save, such as a whole nn.Module, which is not unpickled"),
    ("plain.pkl.pt", "it is a pickle"),
    ("x.npy", "it is a numpy array"),
])
def test_a_model_file_of_another_kind_says_what_a_model_file_must_be(root, monkeypatch, capsys, model, kind):
    code, err = run_main(root, monkeypatch, capsys, ["paths", model, "x.npy"])
    assert code == EXIT_FILE
    assert len(err) == 1
    assert f"cannot read {model} as a TorchScript model: {kind}" in err[0]
    assert "a model file must be a program saved by torch.export.save (.pt2) or a TorchScript file" in err[0]
    assert "module:function" in err[0]
    assert "corrupted" not in err[0]


@pytest.mark.parametrize("place", ["model_zip", "model_legacy", "inputs_pt", "inputs_npy"])
def test_files_that_run_code_when_unpickled_are_refused_unread(tmp_path, monkeypatch, capsys, place):
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "x.npy", np.zeros((2, 6), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(make_mlp()).save(str(tmp_path / "mlp.pt"))
    if place == "model_zip":
        torch.save({"weight": Touches(marker)}, tmp_path / "evil.pt")
        argv = ["paths", "evil.pt", "x.npy"]
    elif place == "model_legacy":
        torch.save(Touches(marker), tmp_path / "evil.pt", _use_new_zipfile_serialization=False)
        argv = ["paths", "evil.pt", "x.npy"]
    elif place == "inputs_pt":
        torch.save(Touches(marker), tmp_path / "evil.pt")
        argv = ["paths", "mlp.pt", "evil.pt"]
    else:
        np.save(tmp_path / "evil.npy", np.array([Touches(marker)], dtype=object), allow_pickle=True)
        argv = ["paths", "mlp.pt", "evil.npy"]
    code, err = run_main(tmp_path, monkeypatch, capsys, argv)
    assert code == EXIT_FILE, err
    assert len(err) == 1
    assert not marker.exists()


# -- rule and composite names ---------------------------------------------------------------------
def _namespace(**options) -> argparse.Namespace:
    defaults = {"rule": "epsilon", "composite": None, "epsilon": 1e-6, "gamma": None, "alpha": None, "beta": None,
                "low": None, "high": None}
    return argparse.Namespace(**{**defaults, **options})


@pytest.mark.parametrize("option, names", [("rule", cli.RULES), ("composite", cli.COMPOSITES)])
def test_every_accepted_name_builds_and_others_list_the_accepted(option, names):
    x = torch.rand(2, 6)
    for name in names:
        method = cli.relevance_method(_namespace(**{option: name}), x)
        assert list(method) == [option]
    with pytest.raises(cli.CliError) as error_info:
        cli.relevance_method(_namespace(**{option: "alpha1beta0"}), x)
    assert error_info.value.code == EXIT_USAGE
    assert str(error_info.value) == f"unknown --{option} 'alpha1beta0'; accepted: {', '.join(names)}"


@pytest.mark.parametrize("option, names", [("--rule", cli.RULES), ("--composite", cli.COMPOSITES)])
def test_the_parser_refuses_other_names_listing_the_accepted(capsys, option, names):
    with pytest.raises(SystemExit) as exit_info:
        main(["paths", "mlp.pt", "x.npy", option, "EpsilonPlus"])
    assert exit_info.value.code == EXIT_USAGE
    assert f"argument {option}: invalid choice: 'EpsilonPlus' (choose from {', '.join(map(repr, names))})" \
        in capsys.readouterr().err


#: the same rule or composite spelled by the command line and by graphlrp.evaluation
SPELLINGS = {
    "rule": {"epsilon": "epsilon", "zplus": "zplus", "alphabeta": "alpha2beta1", "gamma": "gamma",
             "wsquare": "wsquare", "flat": "flat"},
    "composite": {"epsilon-plus": "EpsilonPlus", "epsilon-plus-flat": "EpsilonPlusFlat",
                  "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1"},
}


@pytest.mark.parametrize("option", ["rule", "composite"])
def test_the_two_spellings_of_a_name_build_the_same_method(option):
    known = evaluation.RULES if option == "rule" else evaluation.COMPOSITES
    assert set(SPELLINGS[option].values()) == set(known)
    for cli_name, evaluation_name in SPELLINGS[option].items():
        built = cli.relevance_method(_namespace(**{option: cli_name}), torch.rand(2, 6))[option]
        assert repr(built) == repr(known[evaluation_name]())


def test_evaluation_refuses_an_unknown_name_listing_the_known():
    with pytest.raises(errors.InputError, match=r"unknown rule 'alphabeta'; known names: epsilon, zplus, "
                                                r"alpha2beta1, gamma, wsquare, flat"):
        evaluation.explain_func(make_mlp(), np.zeros((1, 6), dtype=np.float32), 0, rule="alphabeta")


# -- plots ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_explanation() -> tuple[graphlrp.Explanation, torch.Tensor]:
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    graph = graphlrp.lower(make_cnn(), x)
    return graphlrp.explain(graph, x, target=0), x


def test_heatmaps_share_one_symmetric_scale_shown_by_a_colour_bar():
    base = torch.randn(4, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    relevance = torch.stack([base, 0.5 * base, -0.1 * base])
    fig = plot.heatmap_figure(relevance)
    panels = [ax for ax in fig.axes if ax.images]
    bound = float(base.abs().max())
    assert len(panels) == 3
    for ax in panels:
        assert ax.images[0].get_clim() == pytest.approx((-bound, bound), rel=1e-12)
    colour_bars = [ax for ax in fig.axes if not ax.images]
    assert len(colour_bars) == 1 and colour_bars[0].get_ylabel() == "relevance"
    fixed = plot.heatmap_figure(relevance, scale=10.0)
    assert all(ax.images[0].get_clim() == (-10.0, 10.0) for ax in fixed.axes if ax.images)


def test_save_heatmaps_takes_an_explanation(tmp_path, cnn_explanation):
    explanation, x = cnn_explanation
    path = plot.save_heatmaps(explanation, tmp_path / "heat.png", inputs=x, titles=["a", "b", "c"])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    fig = plot.heatmap_figure(explanation, inputs=x)
    heat = [ax.images[0].get_array() for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "bwr"]
    assert len(heat) == 3
    for drawn, expected in zip(heat, explanation.input_relevance.sum(1)):
        np.testing.assert_array_equal(np.asarray(drawn), expected.double().numpy())


@pytest.mark.parametrize("call, error, message", [
    (lambda: plot.heatmap_figure(torch.zeros(2, 5)), errors.InputError, r"got shape \(2, 5\)"),
    (lambda: plot.heatmap_figure(torch.full((1, 3, 3), float("nan"))), errors.InputError, "NaN or inf"),
    (lambda: plot.heatmap_figure(torch.zeros(2, 3, 3), inputs=torch.zeros(3, 3, 3)), errors.InputError,
     "inputs must be 2 samples"),
    (lambda: plot.heatmap_figure(torch.zeros(2, 3, 3), titles=["a"]), errors.InputError, "one per sample"),
    (lambda: plot.heatmap_figure(torch.zeros(2, 3, 3), scale=0.0), errors.InputError, "positive finite"),
    (lambda: plot.heatmap_figure("heat"), errors.ArgumentTypeError, "array of numbers"),
    (lambda: plot.circuit_figure(42), errors.ArgumentTypeError, "Circuit or a networkx.DiGraph"),
    (lambda: plot.circuit_figure(nx.DiGraph()), errors.InputError, "no nodes"),
])
def test_plots_refuse_what_they_cannot_draw(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_draw_circuit_takes_a_circuit_with_the_explanation_values(tmp_path):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    graph = graphlrp.lower(model, x)
    explanation = graphlrp.explain(graph, x, target=1)
    circuit = analysis.relevant_circuit(explanation, 1, 0.7)
    G = plot.circuit_graph(circuit)
    full = export.explanation_to_networkx(explanation, 1)
    assert set(G.edges) == set(zip(circuit.src.tolist(), circuit.dst.tolist()))
    for u, v, r in G.edges(data="relevance"):
        assert r == pytest.approx(full.edges[u, v]["relevance"], rel=1e-12)
    for node, data in G.nodes(data=True):
        assert data["relevance"] == full.nodes[node]["relevance"]
        assert data["level"] == full.nodes[node]["level"] and data["label"] == graph.node_label(node)
    assert plot.draw_circuit(circuit, tmp_path / "c.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plot.draw_circuit(full, tmp_path / "full.svg").read_text().lstrip().startswith("<?xml")
    fig = plot.circuit_figure(circuit)
    assert any(ax.get_ylabel() == "node relevance" for ax in fig.axes)


# -- in a shell ------------------------------------------------------------------------------------
def _shell(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_shell_sees_one_line_and_the_code_and_the_traceback_only_with_debug(root):
    run = _shell(["-m", "graphlrp", "paths", "state_dict.pt", "x.npy"], root)
    assert run.returncode == EXIT_FILE
    assert run.stderr.splitlines() == [run.stderr.strip()] and "state_dict" in run.stderr
    run = _shell(["-m", "graphlrp", "--debug", "paths", "state_dict.pt", "x.npy"], root)
    assert run.returncode == EXIT_FILE
    assert "Traceback" in run.stderr and run.stderr.splitlines()[-1].startswith("graphlrp: error: cannot read")


def test_import_graphlrp_loads_plot_without_matplotlib(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"  # import matplotlib fails
        "import graphlrp, torch\n"
        "assert graphlrp.plot.save_heatmaps is not None\n"
        "try:\n"
        "    graphlrp.plot.save_heatmaps(torch.zeros(1, 2, 2), 'h.png')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    run = _shell(["-c", script], tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "plots need matplotlib: pip install 'graphlrp[examples]'"
    assert not (tmp_path / "h.png").exists()
