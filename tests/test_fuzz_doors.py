"""The four guarantees on generated inputs through every public door (the CI profile of the fuzz suite).

Every door of :mod:`fuzz` runs a few derandomized hypothesis examples once (module fixture);
each guarantee is then its own test per door, so that a door failing one guarantee still has the
others checked:

- no crash: only graphlrp's documented exceptions leave a call (the command line: exit codes 0, 2,
  3, 4, a one-line message, no traceback);
- no silent wrong result: finite relevance for finite inputs, lowered graphs computing what the
  model computes, LRP-0 equal to gradient × input on homogeneous networks, references for paths,
  circuits, file round trips;
- no mutation: the user's models, tensors, graphs, genomes and files bit-identical after the call;
- no hang: every call answers within the time limit.

``scripts/fuzz`` runs the same doors on many more inputs. A guarantee that a door does not hold
yet is marked ``xfail(strict=True)`` naming the bug, so that the mark fails once the bug is fixed.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import replace
import sys
import time
from pathlib import Path

import pytest
import torch

import graphlrp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz import DOORS, Door, run_case  # noqa: E402
from fuzz.campaign import Tally, reproducers, run_door  # noqa: E402
from fuzz.core import fingerprint, require_finite  # noqa: E402
from fuzz.doors_build import EdgesCase, LowerCase, NetworkxCase  # noqa: E402
from fuzz.doors_io import CliCase, FileCase  # noqa: E402
from fuzz.doors_lrp import AnalysisCase, ExplainCase, MethodCase, RuleCase, RuleSpec  # noqa: E402
from fuzz.models import ModelSpec  # noqa: E402
from fuzz.networks import DagSpec  # noqa: E402

#: examples per door in CI
EXAMPLES = 15
#: seconds one example may take in CI before it counts as a hang
SECONDS = 30.0

GUARANTEES = {"crash": "no crash", "wrong": "no silent wrong result", "mutation": "no mutation", "hang": "no hang"}

#: (door, kind) -> the bug that breaks that guarantee on the CI examples today
KNOWN: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def tallies() -> dict[str, Tally]:
    """Each door's outcomes on its CI examples (run once for the four guarantees)."""
    results = {}
    for name, door in DOORS.items():
        with contextlib.redirect_stderr(io.StringIO()):  # torch.fx prints the errors it re-raises
            results[name] = run_door(door, EXAMPLES, SECONDS, run_seed=None)
    return results


def _params():
    for name in DOORS:
        for kind in GUARANTEES:
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN[name, kind])] if (name, kind) in KNOWN else []
            yield pytest.param(name, kind, marks=marks, id=f"{name}-{kind}")


@pytest.mark.parametrize("door, kind", list(_params()))
def test_guarantee(tallies, door, kind):
    tally = tallies[door]
    assert not tally.harness, f"the fuzz suite failed to build cases: {tally.harness[:3]}"
    assert tally.tried >= EXAMPLES // 2, f"only {tally.tried} examples ran"
    failing = Tally(door, examples={key: value for key, value in tally.examples.items() if key[0] == kind})
    assert tally.counts[kind] == 0, (
        f"{GUARANTEES[kind]} broken on {tally.counts[kind]} of {tally.tried} inputs of {door}:\n"
        f"{reproducers([failing])}"
    )


def test_every_door_documents_errors_and_succeeds(tallies):
    """The generated inputs reach both sides of every door: some calls succeed, some are refused."""
    for name, tally in tallies.items():
        assert tally.counts["ok"] > 0, f"no generated input of {name} succeeded: {dict(tally.counts)}"
        assert tally.counts["documented"] + tally.counts["crash"] > 0, f"no input of {name} was refused"


# -- the checks can fail ------------------------------------------------------------------------
class _Probe(Door):
    """A door whose call does what ``behaviour`` says, to show each outcome is detected."""

    name = "probe"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    def prepare(self, case):
        return {"x": torch.ones(3), "model": torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))}

    def watched(self, setup):
        return setup

    def call(self, setup):
        return self.behaviour(setup)

    def verify(self, setup, result):
        require_finite("result", result)


def _sleep(setup):
    time.sleep(5)


def _running_stats(setup):
    setup["model"].train()(torch.randn(4, 2))
    return torch.zeros(1)


@pytest.mark.parametrize("behaviour, kind", [
    (lambda s: torch.zeros(1), "ok"),
    (lambda s: s["x"].add_(0.0 * s["x"] - 0.0), "ok"),  # written in place, with the same bits
    (lambda s: s["x"].mul_(-1.0), "mutation"),
    (lambda s: s["x"].requires_grad_(True), "mutation"),
    (lambda s: s["model"].eval() and torch.zeros(1), "mutation"),  # a training flag
    (_running_stats, "mutation"),
    (lambda s: s["model"][0].register_forward_hook(lambda *a: None) and torch.zeros(1), "mutation"),
    (lambda s: torch.tensor([float("nan")]), "wrong"),
    (lambda s: graphlrp.explain(None, None), "documented"),
    (lambda s: [][1], "crash"),
    (lambda s: (_ for _ in ()).throw(ValueError("plain")), "crash"),
    (_sleep, "hang"),
])
def test_each_outcome_is_detected(behaviour, kind):
    assert run_case(_Probe(behaviour), None, seconds=0.5).kind == kind


def test_fingerprints_see_every_bit():
    a = torch.tensor([0.0, 1.0])
    b = torch.tensor([-0.0, 1.0])  # equal values, different bits
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(torch.tensor([float("nan")])) == fingerprint(torch.tensor([float("nan")]))
    assert fingerprint(a) != fingerprint(a.unsqueeze(0))


# -- the examples and the failures the campaigns found, through the same doors ---------
DAG = DagSpec(3, ((0, 2, 1.0), (1, 2, -0.5)), (0.0, 0.0, 0.0), ("identity", "identity", "relu"), (0, 1), None)
DAG32 = DagSpec(3, ((0, 2, 1.0), (1, 2, -0.5)), (0.0, 0.0, 0.0), ("identity", "identity", "relu"), (0, 1), None,
                dtype="float32")
MLP = ModelSpec(widths=(3, 4, 2), bias=False)
CLI = ("explain", "factory", "ok_npy")
EXPLICIT = {
    "inplace LeakyReLU": ("lower", LowerCase(ModelSpec((3, 4, 2), "leaky_relu", inplace=True, bias=False), "ok", 2,
                                             0, ())),
    "inplace Hardsigmoid traced": ("lower", LowerCase(ModelSpec((3, 4, 4, 2), "hardsigmoid", form="traced",
                                                                calls="function", inplace=True), "ok", 2, 0, ())),
    "reused ReLU": ("lower", LowerCase(ModelSpec((3, 4, 4, 2), reuse=True), "ok", 2, 0, ())),
    "training batch norm": ("lower", LowerCase(ModelSpec((3, 4, 2), norm="batchnorm", training="train"), "ok", 2, 0,
                                               ())),
    "traced mixed flags": ("lower", LowerCase(ModelSpec((3, 4, 2), form="traced", norm="dropout", training="mixed"),
                                              "ok", 2, 0, ())),
    "leading inplace op": ("lower", LowerCase(ModelSpec((3, 2), leading_inplace=True, inplace=True), "ok", 2, 0, ())),
    "tuple output": ("lower", LowerCase(ModelSpec((3, 2), form="traced", tuple_output=True), "ok", 2, 0, ())),
    "requires_grad input": ("explain", ExplainCase(MLP, "requires_grad", 2, 0, "valid", RuleSpec(
        "Epsilon", (("epsilon", 0.0),)), None, "none")),
    "empty batch": ("explain", ExplainCase(MLP, "empty", 2, 0, "valid", None, None, "none")),
    "Epsilon(1e39) on float32": ("rules", RuleCase(RuleSpec("Epsilon", (("epsilon", 1e39),)), DAG32, 1.0, 0)),
    "epsilon = nan assigned": ("rules", RuleCase(RuleSpec("Epsilon", (), (("epsilon", float("nan")),)), DAG, 1.0, 0)),
    "gamma = -1 assigned": ("rules", RuleCase(RuleSpec("Gamma", (), (("gamma", -1),)), DAG, 1.0, 0)),
    "WSquare on weights of 1e30": ("rules", RuleCase(RuleSpec("WSquare"), DAG32, 1e30, 0)),
    "to_networkx(sample=[], aggregate='mean')": ("explanation", MethodCase(DAG, 2, 0, "to_networkx", [], (
        ("aggregate", "mean"),))),
    "edge_relevance(max_bytes='x')": ("explanation", MethodCase(DAG, 2, 0, "edge_relevance", None, (
        ("max_bytes", "x"), ("out", "none")))),
    "to_networkx of a bfloat16 graph": ("explanation", MethodCase(replace(DAG, dtype="bfloat16"), 1, 0, "to_networkx",
                                                                  0, ())),
    "node id 2**40": ("from_edges", EdgesCase(DAG, "huge_id", "list", False, False, 0)),
    "huge int weight in networkx": ("from_networkx", NetworkxCase(DAG, "huge_int_weight", True, 0)),
    "GraphML of an ordinary networkx graph": ("files", FileCase("read_graphml", "networkx_ordinary", 0.5, DAG)),
    "JSON list": ("files", FileCase("read_json", "json_list", 0.5, DAG)),
    "JSON missing key": ("files", FileCase("read_json", "missing_key", 0.5, DAG)),
    "deep JSON": ("files", FileCase("read_json", "deep", 0.5, DAG)),
    "GraphML entity expansion": ("files", FileCase("read_graphml", "entities", 0.5, DAG)),
    "top_paths(k=10**7)": ("analysis", AnalysisCase(DAG, 1, 0, "top_paths", (("k", 10**7),))),
    "--epsilon 1e300": ("cli", CliCase(*CLI, (("--epsilon", "1e300"),), ("--quiet",), "out.npy")),
    "NaN in a later batch": ("cli", CliCase("explain", "factory", "nan_later", (("--batch-size", "2"),), (),
                                            "out.npy")),
    "a state_dict as the model": ("cli", CliCase("explain", "state_dict", "ok_npy", (), (), "out.npy")),
    "a pickled module as the model": ("cli", CliCase("explain", "pickled_module", "ok_npy", (), (), "out.npy")),
}
#: name -> the bug that still breaks that example
EXPLICIT_KNOWN: dict[str, str] = {}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=EXPLICIT_KNOWN[n])] if n in EXPLICIT_KNOWN else [])
    for n in EXPLICIT])
def test_explicit_example_works_or_is_refused(name):
    door, case = EXPLICIT[name]
    with contextlib.redirect_stderr(io.StringIO()):
        finding = run_case(DOORS[door], case, SECONDS)
    assert finding.kind in ("ok", "documented"), f"{name}: {finding}"
