"""Sphinx configuration of graphlrp's API reference.

The reference pages are generated from the package itself when the build starts: one page per
public module, listing every public name (the module's ``__all__``, or else every name it defines
that does not start with an underscore). Each object is documented once, on the page of the public module
that defines it, or else of the innermost public package around its module; other pages that
export it link there. When the build finishes, every public name must be in the reference, or the build warns
(and ``scripts/docs`` treats warnings as errors).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
from pathlib import Path

from sphinx.util import logging

import graphlrp

logger = logging.getLogger(__name__)

project = "graphlrp"
author = "graphlrp maintainers"
release = graphlrp.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
add_module_names = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

PUBLIC_MODULES = [
    "graphlrp",
    "graphlrp.rules",
    "graphlrp.composites",
    "graphlrp.analysis",
    "graphlrp.export",
    "graphlrp.plot",
    "graphlrp.errors",
    "graphlrp.reductions",
    "graphlrp.kernels",
    "graphlrp.devices",
    "graphlrp.thresholds",
    "graphlrp.calibration",
    "graphlrp.determinism",
    "graphlrp.evaluation",
    "graphlrp.aggregation",
    "graphlrp.pruning",
    "graphlrp.explainer",
    "graphlrp.workspace",
    "graphlrp.transforms",
    "graphlrp.frontends",
    "graphlrp.blocks",
]
GENERATED = Path(__file__).parent / "generated"


def _modules() -> list[str]:
    """The public modules that exist in this version of the package."""
    return [name for name in PUBLIC_MODULES if importlib.util.find_spec(name) is not None]


def public_names(module_name: str) -> list[str]:
    """Names a module exports: its ``__all__``, else what it defines without a leading underscore."""
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    if exported is not None:
        names = list(exported)
    else:
        names = [
            name for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module_name
        ]
    return [name for name in names if not inspect.ismodule(getattr(module, name))]


def _home_module(obj: object, modules: list[str]) -> str | None:
    """The public module an object belongs to: the one that defines it, else the innermost public
    package around the module that defines it."""
    defined_in = getattr(obj, "__module__", None) or ""
    around = [m for m in modules if defined_in == m or defined_in.startswith(m + ".")]
    return max(around, key=len) if around else None


def _homes(modules: list[str]) -> dict[int, tuple[str, str]]:
    """For each exported object, the page (module, name) that documents it."""
    homes: dict[int, tuple[str, str]] = {}
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            obj = getattr(module, name)
            owner = _home_module(obj, modules)
            if owner is not None and name in public_names(owner):
                homes[id(obj)] = (owner, name)
            else:
                homes.setdefault(id(obj), (module_name, name))
    return homes


def _directive(obj: object) -> str:
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "autoexception"
    if inspect.isclass(obj):
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _page(module_name: str, homes: dict[int, tuple[str, str]]) -> str:
    module = importlib.import_module(module_name)
    lines = [f"``{module_name}``", "=" * (len(module_name) + 4), "",
             f".. automodule:: {module_name}", "   :no-members:", "",
             f".. currentmodule:: {module_name}", ""]
    elsewhere = []
    for name in public_names(module_name):
        obj = getattr(module, name)
        home = homes[id(obj)]
        if home != (module_name, name):
            elsewhere.append(f"- ``{name}``: :py:obj:`{home[0]}.{home[1]}`")
            continue
        lines += [f".. {_directive(obj)}:: {name}"]
        if inspect.isclass(obj):
            lines += ["   :members:", "   :show-inheritance:"]
        lines += [""]
    if elsewhere:
        lines += ["Also exported here", "-" * 18, "", *elsewhere, ""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _help_block(parser: argparse.ArgumentParser) -> list[str]:
    return [".. code-block:: text", ""] + [f"   {line}".rstrip() for line in parser.format_help().splitlines()] + [""]


def _cli_page() -> str:
    """The command line's reference: the help of ``graphlrp`` and of each of its commands."""
    from graphlrp.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parser = build_parser()
        lines = ["Command line", "============", "",
                 "The help of the ``graphlrp`` command and of each of its commands, as printed by ``--help``.", ""]
        lines += _help_block(parser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    title = f"``graphlrp {name}``"
                    lines += [title, "-" * len(title), ""] + _help_block(command)
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return "\n".join(lines)


def generate_pages(app) -> None:
    """Write one reference page per public module into ``generated/``."""
    GENERATED.mkdir(exist_ok=True)
    modules = _modules()
    homes = _homes(modules)
    for module_name in modules:
        _write_if_changed(GENERATED / f"{module_name}.rst", _page(module_name, homes))
    toc = ["API reference", "=============", "", ".. toctree::", "   :maxdepth: 1", ""]
    toc += [f"   {module_name}" for module_name in modules] + ["   cli"]
    _write_if_changed(GENERATED / "cli.rst", _cli_page())
    _write_if_changed(GENERATED / "index.rst", "\n".join(toc) + "\n")
    for stale in GENERATED.glob("*.rst"):
        if stale.stem not in ("index", "cli") and stale.stem not in modules:
            stale.unlink()


def check_every_public_name(app, env) -> None:
    """Warn about any public name that the reference does not document."""
    documented = set(env.get_domain("py").objects)
    modules = _modules()
    homes = _homes(modules)
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in public_names(module_name):
            home = homes[id(getattr(module, name))]
            if f"{home[0]}.{home[1]}" not in documented:
                logger.warning(
                    "%s.%s is public but not in the API reference", module_name, name)


def setup(app) -> None:
    app.connect("builder-inited", generate_pages)
    app.connect("env-check-consistency", check_every_public_name)
