"""The Python examples of README.md and the how-to pages in docs/ run as written.

Each page's ```python blocks are joined in order into one script, which runs in a fresh
interpreter in a temporary directory (examples write files, and some register handlers in
module-level tables), so an example that no longer matches the library fails here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("howto-*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def python_blocks(text: str) -> list[str]:
    """The contents of the page's fenced ```python blocks, in order."""
    return PYTHON_BLOCK.findall(text)


def test_python_blocks_are_found_in_order() -> None:
    page = "text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n"
    assert python_blocks(page) == ["a = 1\n", "b = a\n"]


def test_every_extension_point_has_a_howto() -> None:
    names = {page.name for page in PAGES}
    assert {"howto-rule.md", "howto-block-kind.md", "howto-lower-module.md", "howto-frontend.md"} <= names


def test_relative_links_of_the_docs_point_to_files() -> None:
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            path = target.split("#")[0]
            if path and "://" not in path and not (page.parent / path).exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_page_examples_run(page: Path, tmp_path: Path) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    assert blocks, f"{page.name} has no python example"
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"
