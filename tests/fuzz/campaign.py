"""Run many generated inputs through a door and tally the outcomes (used by ``scripts/fuzz``)."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from hypothesis import HealthCheck, Phase, given, seed, settings

from .core import Door, Finding, HarnessError, run_case

#: findings kept per (kind, first words of the detail): the shortest reproducer of each
FAILING = ("crash", "hang", "wrong", "mutation")


@dataclass
class Tally:
    """Outcomes of one door's campaign, and the shortest reproducer of every distinct failure."""

    door: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    harness: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def tried(self) -> int:
        return sum(self.counts.values())

    def add(self, case: Any, finding: Finding) -> None:
        self.counts[finding.kind] += 1
        if finding.kind in FAILING:
            key = (finding.kind, _signature(finding.detail))
            text = repr(case)
            if key not in self.examples or len(text) < len(self.examples[key][0]):
                self.examples[key] = (text, finding.detail)


def _signature(detail: str) -> str:
    """What groups failures: the exception type and the first words of its message, without numbers."""
    words = "".join(c if not c.isdigit() else "#" for c in detail).split()
    return " ".join(words[:8])


def run_door(door: Door, examples: int, seconds: float, run_seed: int | None = 0,
             progress: Callable[[Tally], None] | None = None) -> Tally:
    """Generate up to ``examples`` cases for ``door`` (fewer if hypothesis exhausts the space) and tally them."""
    tally = Tally(door.name)
    start = time.perf_counter()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=run_seed is None)
    @given(door.cases())
    def body(case):
        try:
            tally.add(case, run_case(door, case, seconds))
        except HarnessError as error:
            tally.harness.append(str(error))
        if progress is not None and tally.tried % 200 == 0:
            progress(tally)

    if run_seed is not None:
        body = seed(run_seed)(body)
    body()
    tally.seconds = time.perf_counter() - start
    return tally


HEADER = ("door", "inputs tried", "documented errors", "crashes", "hangs", "silent wrong results", "mutations")


def table(tallies: list[Tally]) -> str:
    """The markdown table of the campaign: one row per door."""
    rows = [HEADER, tuple("---" for _ in HEADER)]
    for t in tallies:
        rows.append((t.door, str(t.tried), str(t.counts["documented"]), str(t.counts["crash"]), str(t.counts["hang"]),
                     str(t.counts["wrong"]), str(t.counts["mutation"])))
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def reproducers(tallies: list[Tally]) -> str:
    """Every distinct failure with its shortest generated input, door by door, in markdown."""
    lines = []
    for t in tallies:
        if not t.examples and not t.harness:
            continue
        owner = next((d.owner for d in _doors() if d.name == t.door), "")
        lines.append(f"### {t.door} ({owner})\n")
        for (kind, _), (case, detail) in sorted(t.examples.items()):
            lines.append(f"- **{kind}**: `{detail}`\n\n  ```\n  {case}\n  ```")
        for error in t.harness[:5]:
            lines.append(f"- **harness error** (a bug of the fuzz suite): `{error}`")
        lines.append("")
    return "\n".join(lines)


def _doors():
    from . import DOORS

    return DOORS.values()


