"""Property/fuzz suite over every public door of graphlrp.

Each door (:mod:`fuzz.core`) generates valid and invalid inputs with hypothesis and checks the four
guarantees on every one: no change to the user's objects, no NaN/inf relevance for finite inputs,
results that agree with an independent reference, and only graphlrp's documented exceptions (the
command line: exit codes 0, 2, 3, 4 and no traceback). ``tests/test_fuzz_doors.py`` runs a few
examples per door in CI; ``scripts/fuzz`` runs a long campaign (:mod:`fuzz.campaign`).
"""
from .core import KINDS, Door, Finding, HarnessError, run_case
from .doors_build import EdgesDoor, LowerDoor, NeatDoor, NetworkxDoor
from .doors_io import CliDoor, FilesDoor
from .doors_lrp import AnalysisDoor, CompositesDoor, ExplainDoor, ExplanationDoor, RulesDoor

#: every door, by name
DOORS: dict[str, Door] = {door.name: door for door in (
    ExplainDoor(), RulesDoor(), CompositesDoor(), ExplanationDoor(), AnalysisDoor(), LowerDoor(), EdgesDoor(),
    NetworkxDoor(), NeatDoor(), FilesDoor(), CliDoor(),
)}

__all__ = ["DOORS", "Door", "Finding", "HarnessError", "KINDS", "run_case"]
