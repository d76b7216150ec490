"""The ``graphlrp`` command end to end: ``python -m graphlrp`` in subprocesses, checked against the library.

Starting a subprocess imports torch (a few seconds), so every command runs once, two at a time, in the
module-scoped fixture :func:`runs`; each test checks the result of the commands it names. More error
cases run in-process through :func:`graphlrp.cli.main`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import analysis, composites, export, rules
from graphlrp.cli import EXIT_FILE, EXIT_MODEL, EXIT_OK, EXIT_USAGE, from_torchscript, main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FACTORY_SOURCE = '''
import torch
import torch.nn as nn


def make():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
'''


def make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def make_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 4 * 4, 4),
    ).eval()


def save_scripted(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
        torch.jit.script(model).save(str(path))
    return path


@dataclass(frozen=True)
class Workspace:
    """The files the commands read, and the eager models and inputs they hold."""

    root: Path
    mlp: nn.Sequential
    cnn: nn.Sequential
    x_mlp: torch.Tensor  # float32 view of x_mlp.npy, which holds float64
    x_cnn: torch.Tensor


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    mlp, cnn = make_mlp(), make_cnn()
    save_scripted(mlp, root / "mlp.pt")
    save_scripted(cnn, root / "cnn.pt")
    save_scripted(nn.Sequential(nn.Linear(6, 3), nn.Softmax(dim=1)), root / "softmax.pt")
    x_mlp = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    np.save(root / "x_mlp.npy", x_mlp.numpy())
    x_cnn = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.save(x_cnn, root / "x_cnn.pt")
    torch.save({"x": x_cnn}, root / "dict.pt")
    (root / "junk.npy").write_bytes(b"not an array")
    (root / "factory.py").write_text(FACTORY_SOURCE)
    return Workspace(root, mlp, cnn, x_mlp.float(), x_cnn)


def commands() -> dict[str, list[str]]:
    """Every command the tests check, by name; paths are relative to the workspace."""
    return {
        "explain_mlp": ["explain", "mlp.pt", "x_mlp.npy", "--out", "out/r_mlp.npy", "--batch-size", "3",
                        "--verbose", "--edges", "e_mlp.graphml", "--sample", "2", "--top-k", "12"],
        "explain_cnn": ["explain", "cnn.pt", "x_cnn.pt", "--out", "r_cnn.pt", "--composite", "epsilon-plus",
                        "--target", "1", "--edges", "e_cnn.json"],
        "explain_factory": ["explain", "factory.py:make", "x_mlp.npy", "--out", "r_factory.pt", "--rule", "gamma",
                            "--gamma", "0.5", "--quiet"],
        "paths": ["paths", "mlp.pt", "x_mlp.npy", "--sample", "1", "--k", "4", "--json"],
        "circuit": ["circuit", "mlp.pt", "x_mlp.npy", "--sample", "1", "--fraction", "0.8", "--edges", "c.json",
                    "--draw", "c.png"],
        "plot": ["plot", "cnn.pt", "x_cnn.pt", "--samples", "2", "--out", "heat.png"],
        "missing_model": ["explain", "nowhere.pt", "x_mlp.npy", "--out", "x.npy"],
        "unsupported_model": ["explain", "softmax.pt", "x_mlp.npy", "--out", "x.npy"],
        "bad_argument": ["explain", "mlp.pt", "x_mlp.npy", "--out", "x.npy", "--edges", "e.json", "--mass", "2"],
    }


@pytest.fixture(scope="module")
def runs(workspace) -> dict[str, subprocess.CompletedProcess]:
    """The result of every command of :func:`commands`, run two at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "graphlrp", *argv], cwd=workspace.root, env=env,
                              capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run, argv) for name, argv in commands().items()}
        return {name: future.result() for name, future in futures.items()}


def succeeded(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert run.returncode == EXIT_OK, f"exit code {run.returncode}\nstdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    return run


def predicted_relevance(model: nn.Module, x: torch.Tensor, **method) -> torch.Tensor:
    """Input relevance of each sample's predicted class, computed in-process."""
    graph = graphlrp.lower(model, x)
    target = graph(x).argmax(1)
    return graphlrp.explain(graph, x, target=target, **method).input_relevance


# -- explain ------------------------------------------------------------------------------------
def test_explain_torchscript_mlp_matches_the_library(runs, workspace):
    run = succeeded(runs["explain_mlp"])
    relevance = torch.from_numpy(np.load(workspace.root / "out" / "r_mlp.npy"))
    torch.testing.assert_close(relevance, predicted_relevance(workspace.mlp, workspace.x_mlp, rule=rules.Epsilon()))
    progress = [line for line in run.stderr.splitlines() if line.startswith("explain: ")]
    assert progress == ["explain: 3/7 samples", "explain: 6/7 samples", "explain: 7/7 samples"]
    assert run.stdout.count("relevance in") == 3  # one conservation table per batch


def test_explain_writes_the_edges_of_one_sample_as_graphml(runs, workspace):
    succeeded(runs["explain_mlp"])
    G = export.read_graphml(workspace.root / "e_mlp.graphml")
    assert G.number_of_edges() == 12
    assert G.graph["samples"] == (2,)
    graph = graphlrp.lower(workspace.mlp, workspace.x_mlp)
    x = workspace.x_mlp[2:3]
    expected = export.explanation_to_networkx(graphlrp.explain(graph, x, target=graph(x).argmax(1)), 0, top_k=12)
    assert set(G.edges) == set(expected.edges)
    for u, v, data in expected.edges(data=True):
        assert G.edges[u, v]["relevance"] == pytest.approx(data["relevance"], rel=1e-5, abs=1e-7)


def test_explain_torchscript_cnn_with_a_composite_and_json_edges(runs, workspace):
    succeeded(runs["explain_cnn"])
    relevance = torch.load(workspace.root / "r_cnn.pt")
    graph = graphlrp.lower(workspace.cnn, workspace.x_cnn)
    expected = graphlrp.explain(graph, workspace.x_cnn, target=1, composite=composites.EpsilonPlus())
    torch.testing.assert_close(relevance, expected.input_relevance)
    G = export.read_json(workspace.root / "e_cnn.json")
    assert G.number_of_edges() == graph.num_edges


def test_explain_module_function_from_a_file(runs, workspace):
    succeeded(runs["explain_factory"])
    assert runs["explain_factory"].stderr == ""  # --quiet
    namespace: dict = {}
    exec(FACTORY_SOURCE, namespace)
    model = namespace["make"]().eval()
    relevance = torch.load(workspace.root / "r_factory.pt")
    torch.testing.assert_close(relevance, predicted_relevance(model, workspace.x_mlp, rule=rules.Gamma(0.5)))


# -- paths, circuit, plot -----------------------------------------------------------------------
def test_paths_json_lists_the_k_best_paths_with_their_relevance(runs, workspace):
    """Each path's edge relevance and score recomputed from the library's edge relevance of sample 1,
    and the 4 paths the best of all 48 input → target paths (enumerated here)."""
    paths = json.loads(succeeded(runs["paths"]).stdout)
    graph = graphlrp.lower(workspace.mlp, workspace.x_mlp)
    x = workspace.x_mlp[1:2]
    explanation = graphlrp.explain(graph, x, target=graph(x).argmax(1))
    relevance = explanation.node_relevance[0].double()
    src, dst, _ = graph.edges()
    message = {(s, d): m for s, d, m in zip(src.tolist(), dst.tolist(), explanation.edge_relevance(0).double().tolist())}
    goal = int(graph.outputs[relevance[graph.outputs].abs().argmax()])

    def score(nodes) -> float:
        """``R_goal · Π m_uv / R_v``, a flow of 0 through a node without relevance."""
        flows = [message[u, v] / float(relevance[v]) if relevance[v] != 0 else 0.0 for u, v in zip(nodes, nodes[1:])]
        return float(relevance[goal]) * float(np.prod(flows))

    assert len(paths) == 4
    for path in paths:
        nodes = path["nodes"]
        assert nodes[-1] == goal and [graph.node_label(v) for v in nodes] == path["labels"]
        assert path["labels"][0].startswith("input[")
        assert path["edge_relevance"] == pytest.approx([message[u, v] for u, v in zip(nodes, nodes[1:])], rel=1e-6)
        assert path["score"] == pytest.approx(score(nodes), rel=1e-6)
    inputs, hidden = range(graph.levels[0].size), graph.levels[1].nodes
    every = sorted((score((i, h, goal)) for i in inputs for h in hidden), key=abs, reverse=True)
    assert len(every) == 48
    assert [path["score"] for path in paths] == pytest.approx(every[:4], rel=1e-6)
    assert abs(every[3]) > abs(every[4])  # the best 4 are well defined


def test_circuit_reports_kept_edges_and_faithfulness(runs, workspace):
    out = succeeded(runs["circuit"]).stdout
    graph = graphlrp.lower(workspace.mlp, workspace.x_mlp)
    x = workspace.x_mlp[1:2]
    target = int(graph(x).argmax())
    circuit = analysis.relevant_circuit(graphlrp.explain(graph, x, target=target), 0, 0.8)
    faithfulness = circuit.faithfulness()
    assert f"edges kept: {len(circuit.edges)} of {graph.num_edges}" in out
    assert f"faithfulness: output[{target}] full {float(faithfulness.output[target]):+.6g}, " \
           f"circuit {float(faithfulness.circuit_output[target]):+.6g}" in out
    assert export.read_json(workspace.root / "c.json").number_of_edges() == len(circuit.edges)
    assert (workspace.root / "c.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_writes_a_png(runs, workspace):
    succeeded(runs["plot"])
    assert (workspace.root / "heat.png").read_bytes().startswith(PNG_SIGNATURE)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, code, message", [
    ("missing_model", EXIT_FILE, "model 'nowhere.pt': no such file"),
    ("unsupported_model", EXIT_MODEL, "'1' (Softmax) cannot be lowered"),
    ("bad_argument", EXIT_USAGE, "argument --mass: must be a fraction in (0, 1]"),
])
def test_exit_codes_and_one_line_errors(runs, name, code, message):
    run = runs[name]
    assert run.returncode == code, run.stderr
    assert message in run.stderr.splitlines()[-1]
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("argv, code, message", [
    (["explain", "mlp.pt", "junk.npy", "--out", "x.npy"], EXIT_FILE, "cannot read inputs from junk.npy"),
    (["explain", "mlp.pt", "cnn.pt", "--out", "x.npy"], EXIT_FILE, "cannot read inputs from cnn.pt"),
    (["explain", "mlp.pt", "dict.pt", "--out", "x.npy"], EXIT_FILE, "dict.pt holds a dict, not a tensor"),
    (["paths", "x_mlp.npy", "x_mlp.npy"], EXIT_FILE, "cannot read x_mlp.npy as a TorchScript model"),
    (["paths", "factory.py:build", "x_mlp.npy"], EXIT_FILE, "factory.py has no function 'build'"),
    (["paths", "no_such_module:make", "x_mlp.npy"], EXIT_FILE, "cannot import no_such_module"),
    (["paths", "mlp.pt", "x_cnn.pt"], EXIT_MODEL, "cannot take one sample of shape (1, 8, 8)"),
    (["paths", "mlp.pt", "x_mlp.npy", "--target", "9"], EXIT_MODEL, "--target 9 is out of range"),
    (["paths", "mlp.pt", "x_mlp.npy", "--target-node", "5"], EXIT_MODEL, "target 5 is not an index"),
    (["paths", "mlp.pt", "x_mlp.npy", "--max-edges", "10"], EXIT_MODEL, "more edges than max_edges=10"),
    (["paths", "mlp.pt", "x_mlp.npy", "--sample", "7"], EXIT_USAGE, "--sample 7 is out of range for the 7"),
    (["paths", "mlp.pt", "x_mlp.npy", "--gamma", "1"], EXIT_USAGE, "--gamma applies only to"),
    (["paths", "mlp.pt", "x_mlp.npy", "--rule", "alphabeta", "--alpha", "3", "--beta", "1"], EXIT_USAGE,
     "alpha - beta must equal 1"),
    (["plot", "mlp.pt", "x_mlp.npy", "--out", "p.png"], EXIT_MODEL, "plot needs image-shaped inputs"),
])
def test_errors_in_process(workspace, monkeypatch, capsys, argv, code, message):
    monkeypatch.chdir(workspace.root)
    assert main(argv) == code
    assert message in capsys.readouterr().err


ATTENTION_SOURCE = '''
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].flatten(1))


def make():
    torch.manual_seed(4)
    return Model()
'''


@pytest.mark.parametrize("attention", ["cp-lrp", "attnlrp"])
def test_attention_option_chooses_the_attention_rule(tmp_path, monkeypatch, attention):
    (tmp_path / "attention_model.py").write_text(ATTENTION_SOURCE)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / "x.pt")
    monkeypatch.chdir(tmp_path)
    code = main(["explain", "attention_model.py:make", "x.pt", "--out", "r.pt", "--target", "1", "--quiet",
                 "--attention", attention])
    assert code == EXIT_OK
    namespace: dict = {}
    exec(ATTENTION_SOURCE, namespace)
    model = namespace["make"]().eval()
    expected = graphlrp.explain(graphlrp.lower(model, x, attention=attention), x, target=1).input_relevance
    torch.testing.assert_close(torch.load(tmp_path / "r.pt"), expected)
    other = "attnlrp" if attention == "cp-lrp" else "cp-lrp"
    different = graphlrp.explain(graphlrp.lower(model, x, attention=other), x, target=1).input_relevance
    assert not torch.allclose(different, expected)


def test_help_lists_the_subcommands_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == EXIT_OK
    out = capsys.readouterr().out
    for word in ("explain", "paths", "circuit", "plot", "exit codes"):
        assert word in out


def test_usage_errors_exit_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "model.pt", "inputs.csv", "--out", "r.npy"])
    assert exit_info.value.code == EXIT_USAGE
    assert "'inputs.csv' must end in .pt or .npy" in capsys.readouterr().err


# -- TorchScript, in-process --------------------------------------------------------------------
def test_from_torchscript_rebuilds_modules_and_their_arguments(tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.2),
        nn.Sequential(nn.AvgPool2d(2), nn.Dropout(0.3)), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(save_scripted(model, tmp_path / "model.pt")))
    rebuilt = from_torchscript(scripted)
    assert [type(m) for m in rebuilt.modules()] == [type(m) for m in model.modules()]
    assert rebuilt[2].negative_slope == 0.2 and rebuilt[0].bias is None and rebuilt[0].stride == (2, 2)
    assert not rebuilt.training
    x = torch.randn(3, 2, 8, 8)
    torch.testing.assert_close(rebuilt(x), model(x))
