"""Doors of files and the command line: ``read_graphml`` / ``read_json`` / ``write_graphml`` /
``write_json``, and ``graphlrp.cli.main`` with argument lists and files in a temporary directory."""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
from hypothesis import strategies as st

import graphlrp
from graphlrp import export, rules
from graphlrp.errors import GraphLRPError

from .core import Door, require, require_close, require_finite, tolerance
from .networks import DagSpec, build_network, dag_specs

#: exceptions a reader or writer may raise for a path that is missing or not a file (documented built-ins)
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


# -- files --------------------------------------------------------------------------------------
OPERATIONS = ("read_graphml", "read_json", "write_graphml", "write_json")
READ_CONTENTS = ("valid", "valid", "truncated", "networkx_ordinary", "json_list", "missing_key", "wrong_type",
                 "deep", "entities", "empty", "binary", "missing_file", "directory", "other_format", "bad_tuple")
WRITE_GRAPHS = ("explanation", "explanation", "ordinary", "none", "nan_attribute", "missing_directory",
                "directory", "tuple_attribute")


@dataclass(frozen=True)
class FileCase:
    operation: str
    content: str
    cut: float
    dag: DagSpec


@functools.lru_cache(maxsize=1)
def scratch() -> Path:
    """A temporary directory for the files of the file and command-line doors."""
    return Path(tempfile.mkdtemp(prefix="graphlrp-fuzz-"))


def fresh_directory(name: str) -> Path:
    """An empty directory ``name`` under :func:`scratch` (emptied if it held files of an earlier case)."""
    path = scratch() / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def explanation_graph(dag: DagSpec) -> nx.DiGraph:
    """Sample 0 of an explanation of ``dag`` as a networkx graph (what the writers are for)."""
    network = build_network(dag)
    x = torch.randn(2, network.inputs, dtype=network.dtype, generator=torch.Generator().manual_seed(0))
    return graphlrp.explain(network.graph, x, target=0).to_networkx(0)


def _deep(kind: str) -> str:
    if kind == "json":
        return "[" * 100_000 + "]" * 100_000
    return '<?xml version="1.0"?><graphml>' + "<a>" * 100_000 + "</a>" * 100_000 + "</graphml>"


ENTITIES = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">]>
<graphml xmlns="http://graphml.graphdrawing.org/xmlns"><graph edgedefault="directed">
<node id="0"><data key="d0">&lol7;</data></node></graph></graphml>"""


class FilesDoor(Door):
    """GraphML and node-link JSON: reading files of every kind, writing graphs of every kind, round trips."""

    name = "files"
    owner = "graphlrp/export.py"
    documented = (GraphLRPError,) + PATH_ERRORS

    def cases(self):
        return st.builds(FileCase, operation=st.sampled_from(OPERATIONS), content=st.sampled_from(READ_CONTENTS),
                         cut=st.floats(0, 1), dag=dag_specs(max_other=3, dtypes=("float64", "float32")))

    def prepare(self, case: FileCase):
        folder = fresh_directory("files")
        G = explanation_graph(case.dag)
        suffix = "graphml" if case.operation.endswith("graphml") else "json"
        path = folder / f"graph.{suffix}"
        if case.operation.startswith("write"):
            kind = WRITE_GRAPHS[int(case.cut * (len(WRITE_GRAPHS) - 1e-9))]
            target = {"missing_directory": folder / "missing" / path.name, "directory": folder}.get(kind, path)
            graph = {"ordinary": nx.path_graph(3, create_using=nx.DiGraph), "none": None}.get(kind, G)
            if kind == "nan_attribute":
                graph.nodes[next(iter(graph.nodes))]["relevance"] = float("nan")
            if kind == "tuple_attribute":
                graph.graph["extra"] = (1.5, "x")
            return {"case": case, "G": graph, "expected": G, "path": target, "kind": kind}
        kind = self._write_content(case, G, path, suffix)
        return {"case": case, "G": G, "path": path, "kind": kind}

    @staticmethod
    def _write_content(case: FileCase, G: nx.DiGraph, path: Path, suffix: str) -> str:
        """Write the file of ``case``; returns its kind: ``'valid'`` when a flaw left the written file
        as it was (a cut at its end, a replacement that found nothing to replace)."""
        content = case.content
        written = None
        write = export.write_graphml if suffix == "graphml" else export.write_json
        if content in ("valid", "truncated", "bad_tuple", "missing_key", "wrong_type", "other_format"):
            write(G, path)
            written = path.read_bytes()
        if content == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: int(case.cut * len(data))])
        elif content == "networkx_ordinary":
            ordinary = nx.path_graph(3, create_using=nx.DiGraph)
            if suffix == "graphml":
                nx.write_graphml(ordinary, path)
            else:
                path.write_text(json.dumps(nx.node_link_data(ordinary)))
        elif content == "json_list":
            path.write_text("[1, 2, 3]" if suffix == "json" else "<graphml><graph/></graphml>")
        elif content in ("missing_key", "wrong_type", "bad_tuple"):
            text = path.read_text()
            if suffix == "json":
                data = json.loads(text)
                if content == "missing_key":
                    # a key read_json needs: without 'directed' or 'multigraph' it reads what write_json
                    # writes (a directed graph, not a multigraph), the graph that was written
                    required = sorted(set(data) - {"directed", "multigraph"})
                    data.pop(required[int(case.cut * (len(required) - 1e-9))])
                elif content == "wrong_type":
                    data["nodes"] = {"a": 1}
                else:
                    data["nodes"][0]["position"] = "1,2"
                text = json.dumps(data)
            else:
                old = {"missing_key": 'key="d', "wrong_type": 'attr.type="double"', "bad_tuple": "<data key="}[content]
                new = {"missing_key": 'key="zz', "wrong_type": 'attr.type="int"', "bad_tuple": "<data key="}[content]
                text = text.replace(old, new, 1) if content != "bad_tuple" else text.replace(",", ";x", 1)
            path.write_text(text)
        elif content == "deep":
            path.write_text(_deep(suffix))
        elif content == "entities":
            path.write_text(ENTITIES if suffix == "graphml" else '{"nodes": "&lol;"}')
        elif content == "empty":
            path.write_bytes(b"")
        elif content == "binary":
            path.write_bytes(bytes(range(256)) * 4)
        elif content == "directory":
            path.mkdir()
        elif content == "other_format":
            other = path.with_suffix(".json" if suffix == "graphml" else ".graphml")
            (export.write_json if suffix == "graphml" else export.write_graphml)(G, other)
            other.replace(path)
        if written is not None and content != "valid" and path.read_bytes().strip() == written.strip():
            return "valid"
        return content

    def watched(self, setup):
        watched = {"G": setup["G"]}
        if setup["case"].operation.startswith("read"):
            watched["file"] = setup["path"]
        return watched

    def call(self, setup):
        operation = setup["case"].operation
        if operation.startswith("read"):
            return getattr(export, operation)(setup["path"])
        getattr(export, operation)(setup["G"], setup["path"])
        return getattr(export, operation.replace("write", "read"))(setup["path"])

    def verify(self, setup, result: nx.DiGraph) -> None:
        kind, operation = setup["kind"], setup["case"].operation
        if operation.startswith("read"):
            require(kind in ("valid", "networkx_ordinary"), f"{operation} accepted a file of kind {kind!r}")
            if kind == "valid":
                _require_same_graph(result, setup["G"])
            return
        if kind in ("explanation", "nan_attribute"):
            _require_same_graph(result, setup["G"])


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _require_same_graph(actual: nx.DiGraph, expected: nx.DiGraph) -> None:
    """Nodes, edges and every attribute read back as written."""
    def nodes(G):
        return {n: {k: _plain(v) for k, v in d.items()} for n, d in G.nodes(data=True)}

    def edges(G):
        return {(u, v): {k: _plain(x) for k, x in d.items()} for u, v, d in G.edges(data=True)}

    require(nodes(actual) == nodes(expected), "the nodes read back differ from those written")
    require(edges(actual) == edges(expected), "the edges read back differ from those written")
    require({k: _plain(v) for k, v in actual.graph.items()} == {k: _plain(v) for k, v in expected.graph.items()},
            "the graph attributes read back differ from those written")


# -- the command line ---------------------------------------------------------------------------
FACTORY = '''
import torch
import torch.nn as nn


def make():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))


def make_traced():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(x + torch.relu(self.a(x)))

    torch.manual_seed(4)
    return Residual()


def number():
    return 3


def boom():
    raise RuntimeError("no model today")


def nan_weights():
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    return model


def huge_weights():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        model[0].weight.fill_(1e30)
        model[2].weight.fill_(1e30)
    return model


def tuple_output():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x), x

    return Pair()


def unsupported():
    return nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
'''
MODELS = ("factory", "factory", "scripted", "traced", "number", "boom", "nan_weights", "huge_weights", "tuple_output",
          "unsupported", "state_dict", "pickled_module", "junk_file", "syntax_error", "missing_file", "no_colon",
          "missing_function", "module_function")
INPUTS = ("ok_npy", "ok_npy", "ok_pt", "nan_later", "all_nan", "wrong_width", "vector", "empty", "int", "object",
          "corrupt", "missing", "text_suffix", "huge", "inf", "pickled_pt", "float16")
OPTION_VALUES: dict[str, st.SearchStrategy] = {
    "--target": st.sampled_from(["0", "2", "3", "-1", "predicted", "x", "1.5"]),
    "--rule": st.sampled_from(["epsilon", "zplus", "alphabeta", "gamma", "wsquare", "flat", "zbox", "lrp"]),
    "--composite": st.sampled_from(["epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-gamma-box",
                                    "x"]),
    "--epsilon": st.sampled_from(["0", "1e-6", "0.1", "1e300", "1e39", "-1", "nan", "inf", "x"]),
    "--gamma": st.sampled_from(["0.25", "0", "1e300", "-1", "nan"]),
    "--alpha": st.sampled_from(["2", "1", "0.5", "1e300", "nan"]),
    "--beta": st.sampled_from(["1", "0", "-1", "1e300", "nan"]),
    "--low": st.sampled_from(["-1", "0", "5", "nan", "-inf", "-1e300"]),
    "--high": st.sampled_from(["1", "0", "-5", "nan", "inf", "1e300"]),
    "--max-pool": st.sampled_from(["winner", "proportional", "x"]),
    "--block-kind": st.sampled_from(["auto", "dense", "sparse", "edges", "x"]),
    "--max-edges": st.sampled_from(["1", "100", "0", "-1", "x"]),
    "--sample": st.sampled_from(["0", "1", "5", "6", "-1", "x"]),
    "--batch-size": st.sampled_from(["1", "2", "64", "0", "x"]),
    "--top-k": st.sampled_from(["0", "3", "1000000000", "-1"]),
    "--threshold": st.sampled_from(["0", "0.1", "nan", "inf", "-1"]),
    "--mass": st.sampled_from(["0.5", "1", "0", "1.5", "nan"]),
    "--k": st.sampled_from(["1", "3", "10000000", "0", "-2"]),
    "--score": st.sampled_from(["product", "sum", "x"]),
    "--target-node": st.sampled_from(["0", "2", "3", "-1"]),
    "--fraction": st.sampled_from(["0.9", "1", "0", "1.5", "nan", "1e-300"]),
    "--samples": st.sampled_from(["1", "8", "0"]),
    "--edges": st.sampled_from(["edges.graphml", "edges.json", "edges.txt", "missing/dir/edges.json",
                                "blocked/edges.json"]),
    "--draw": st.sampled_from(["c.png", "c.txt"]),
}
FLAGS = ("--quiet", "--verbose", "--json", "--debug")
OUTS = ("out.npy", "out.pt", "out.txt", "blocked/out.npy", "deep/new/out.npy", None)
COMMANDS = ("explain", "explain", "paths", "circuit", "plot")
#: models the command line must refuse: not a model, failing, unsafe to load (pickles), NaN weights
REFUSED_MODELS = ("number", "boom", "nan_weights", "state_dict", "pickled_module", "junk_file", "syntax_error",
                  "missing_file", "no_colon", "missing_function", "module_function")
#: inputs it must refuse: non-finite, of the wrong shape, empty, unsafe (pickles), unreadable
REFUSED_INPUTS = ("nan_later", "all_nan", "inf", "wrong_width", "vector", "empty", "object", "corrupt", "missing",
                  "text_suffix", "pickled_pt")
#: exit codes of the command line besides 0 (see graphlrp.cli): usage, files, the model
EXIT_CODES = (2, 3, 4)


@dataclass(frozen=True)
class CliCase:
    command: str
    model: str
    inputs: str
    options: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]
    out: str | None


class CliExit(Exception):
    """The command line stopped with a documented exit code and a one-line message."""


class CliCrash(Exception):
    """The command line exited 1, with another code, or printed a traceback."""


@functools.lru_cache(maxsize=1)
def cli_workspace() -> Path:
    """Model and input files for the command line, written once."""
    root = fresh_directory("cli-files")
    (root / "factory.py").write_text(FACTORY)
    (root / "syntax_error.py").write_text("def make(:\n")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "scripted.pt"))
    torch.save(model.state_dict(), root / "state_dict.pt")
    torch.save(model, root / "pickled_module.pt")
    (root / "junk_file.pt").write_bytes(b"\x00junk" * 50)
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    np.save(root / "ok_npy.npy", x.numpy())
    torch.save(x.float(), root / "ok_pt.pt")
    later = x.clone()
    later[4:] = float("nan")
    np.save(root / "nan_later.npy", later.numpy())
    np.save(root / "all_nan.npy", np.full((3, 4), np.nan))
    np.save(root / "wrong_width.npy", np.ones((3, 5)))
    np.save(root / "vector.npy", np.ones(4))
    np.save(root / "empty.npy", np.ones((0, 4)))
    np.save(root / "int.npy", np.arange(12).reshape(3, 4))
    np.save(root / "object.npy", np.array([[1, "a", None, 2.0]], dtype=object), allow_pickle=True)
    (root / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(root / "huge.npy", x.numpy() * 1e300)
    inf = x.numpy().copy()
    inf[0, 0] = np.inf
    np.save(root / "inf.npy", inf)
    (root / "text_suffix.txt").write_text("1 2 3 4\n")
    torch.save({"x": x}, root / "pickled_pt.pt")
    np.save(root / "float16.npy", x.numpy().astype(np.float16))
    return root


def _model_argument(root: Path, kind: str) -> str:
    factory = root / "factory.py"
    return {
        "factory": f"{factory}:make", "traced": f"{factory}:make_traced", "scripted": str(root / "scripted.pt"),
        "state_dict": str(root / "state_dict.pt"), "pickled_module": str(root / "pickled_module.pt"),
        "junk_file": str(root / "junk_file.pt"), "syntax_error": f"{root / 'syntax_error.py'}:make",
        "missing_file": str(root / "missing.pt"), "no_colon": "just-a-name",
        "missing_function": f"{factory}:nothing", "module_function": "json:loads",
    }.get(kind, f"{factory}:{kind}")


def _inputs_argument(root: Path, kind: str) -> str:
    names = {"ok_pt": "ok_pt.pt", "pickled_pt": "pickled_pt.pt", "text_suffix": "text_suffix.txt",
             "missing": "missing.npy"}
    return str(root / names.get(kind, f"{kind}.npy"))


#: what a command line that should succeed is made of
USUAL = {
    "model": ("factory", "scripted", "traced"), "inputs": ("ok_npy", "ok_pt"),
    "options": {"--target": ["0", "2", "predicted"], "--rule": ["epsilon", "zplus", "alphabeta", "gamma", "flat",
                                                               "wsquare", "zbox"],
                "--composite": ["epsilon-plus", "epsilon-gamma-box"], "--epsilon": ["0", "0.1", "1e-6"],
                "--batch-size": ["1", "2"], "--sample": ["0", "3"], "--k": ["1", "3"], "--fraction": ["0.5", "1"],
                "--top-k": ["3"], "--mass": ["0.5"], "--edges": ["edges.graphml", "edges.json"],
                "--block-kind": ["dense", "sparse", "edges"]},
}


@st.composite
def cli_cases(draw) -> CliCase:
    """Command lines: half of them made of usual parts (mostly succeeding), half of any parts."""
    usual = draw(st.booleans())
    values = {n: st.sampled_from(v) for n, v in USUAL["options"].items()} if usual else OPTION_VALUES
    names = draw(st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True))
    if usual and "--rule" in names and "--composite" in names:
        names.remove("--composite")
    return CliCase(
        command=draw(st.sampled_from(COMMANDS[:-1] if usual else COMMANDS)),
        model=draw(st.sampled_from(USUAL["model"] if usual else MODELS)),
        inputs=draw(st.sampled_from(USUAL["inputs"] if usual else INPUTS)),
        options=tuple((name, draw(values[name])) for name in names),
        flags=tuple(draw(st.lists(st.sampled_from(FLAGS[:-1] if usual else FLAGS), max_size=2, unique=True))),
        out=draw(st.sampled_from(OUTS[:2] if usual else OUTS)),
    )


#: options that leave the relevance of every sample as graphlrp.explain computes it with the rule alone
NEUTRAL_OPTIONS = {"--rule", "--epsilon", "--batch-size", "--target", "--block-kind", "--sample", "--edges", "--top-k",
                   "--mass", "--threshold", "--max-edges", "--max-pool"}
SIMPLE_RULES = {"epsilon": rules.Epsilon, "zplus": rules.ZPlus, "flat": rules.Flat, "wsquare": rules.WSquare}


def _library_relevance(case: CliCase) -> torch.Tensor | None:
    """What ``graphlrp.explain`` gives for the command's model, inputs and rule (``None`` where not worked out)."""
    options = dict(case.options)
    rule = SIMPLE_RULES.get(options.get("--rule", "epsilon"))
    if case.model not in ("factory", "scripted", "traced") or case.inputs not in ("ok_npy", "ok_pt") or \
            set(options) - NEUTRAL_OPTIONS or rule is None:
        return None
    try:
        epsilon = float(options.get("--epsilon", "1e-6"))
    except ValueError:
        return None
    if not (math.isfinite(epsilon) and 0 <= epsilon <= 1):
        return None
    namespace: dict[str, Any] = {}
    exec(FACTORY, namespace)
    model = namespace["make_traced" if case.model == "traced" else "make"]().eval()
    root = cli_workspace()
    x = torch.from_numpy(np.load(root / "ok_npy.npy")) if case.inputs == "ok_npy" else torch.load(root / "ok_pt.pt")
    x = x.float()
    with torch.no_grad():
        target = options.get("--target", "predicted")
        targets = model(x).argmax(1) if target == "predicted" else int(target)
    return graphlrp.explain(graphlrp.lower(model, x), x, target=targets, rule=rule(epsilon)).input_relevance


class CliDoor(Door):
    """``graphlrp.cli.main(argv)``: exit code 0, 2, 3 or 4, never a traceback without ``--debug``."""

    name = "cli"
    owner = "graphlrp/cli.py"
    documented = (CliExit,)

    def cases(self):
        return cli_cases()

    def prepare(self, case: CliCase):
        root = cli_workspace()
        work = fresh_directory("cli-run")
        (work / "blocked").write_text("a file where a directory is expected")
        argv = [case.command, _model_argument(root, case.model), _inputs_argument(root, case.inputs)]
        for name, value in case.options:
            argv += [name, str(work / value) if name in ("--edges", "--draw") else value]
        argv += list(case.flags)
        if case.out is not None:
            argv += ["--out", str(work / case.out)]
        watched = {"model file": Path(argv[1].rsplit(":", 1)[0]) if ":" in argv[1] else Path(argv[1]),
                   "inputs file": Path(argv[2])}
        return {"case": case, "argv": argv, "work": work, "watched": watched}

    def watched(self, setup):
        return setup["watched"]

    def call(self, setup):
        from graphlrp.cli import main

        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = main(setup["argv"])
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 2
        err = stderr.getvalue()
        debug = "--debug" in setup["case"].flags
        if "Traceback" in err and not debug:
            raise CliCrash(f"exit {code} with a traceback: {err.strip().splitlines()[-1][:200]}")
        messages = [line for line in err.splitlines() if line.startswith("graphlrp: ")]
        if code not in (0,) + EXIT_CODES:
            raise CliCrash(f"exit {code}: {' | '.join(messages)[:200] or err.strip()[-200:]}")
        if code != 0:
            if len(messages) > 1 and not debug:
                raise CliCrash(f"exit {code} with {len(messages)} error lines: {' | '.join(messages)[:200]}")
            raise CliExit(f"exit {code}: {(messages or err.strip().splitlines() or [''])[-1][:160]}")
        return stdout.getvalue()

    def classify_error(self, error: BaseException):
        finding = super().classify_error(error)
        if isinstance(error, CliExit):  # documented: the code, e.g. "exit 4"
            return type(finding)("documented", str(error).split(":")[0])
        return finding

    def verify(self, setup, stdout: str) -> None:
        case, work = setup["case"], setup["work"]
        require(case.model not in REFUSED_MODELS, f"the command line accepted the model {case.model!r}")
        require(case.inputs not in REFUSED_INPUTS, f"the command line accepted the inputs {case.inputs!r}")
        require(case.command != "plot", "plot accepted inputs that are not images")
        if case.command == "explain" and case.out is not None:
            out = work / case.out
            relevance = torch.from_numpy(np.load(out)) if out.suffix == ".npy" else torch.load(out)
            require_finite("relevance written by explain", relevance)
            expected = _library_relevance(case)
            if expected is not None:
                require_close("relevance written by explain against graphlrp.explain", relevance, expected,
                              tolerance(torch.float32))
        if case.command == "paths" and "--json" in case.flags:
            for path in json.loads(stdout):
                require(math.isfinite(path["score"]), f"path score {path['score']} in paths --json")
        require("nan" not in stdout.lower().split() and "inf" not in stdout.lower().split(),
                f"NaN/inf on stdout: {stdout[:200]}")
