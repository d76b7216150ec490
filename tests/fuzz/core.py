"""What a door is, how one generated input is run through it, and how its outcome is classified.

A *door* is a public entry point of graphlrp. For one generated case it builds the user's objects
afresh (:meth:`Door.prepare`), names those the call must leave alone (:meth:`Door.watched`), makes
the call (:meth:`Door.call`) and checks the result against an independent reference
(:meth:`Door.verify`). :func:`run_case` classifies what happened into one of :data:`KINDS`:

``ok``
    the call returned and the result passed every check;
``documented``
    the call raised one of the door's documented exceptions (a :class:`graphlrp.GraphLRPError`);
``crash``
    any other exception left the call (or the result's own methods raised one);
``hang``
    the call did not finish within the time limit;
``wrong``
    the call returned a result that fails a check: NaN/inf relevance for finite inputs, a lowered
    graph that computes something else than the model, relevance that disagrees with the reference;
``mutation``
    an object the user passed differs, bit for bit, after the call (on success and on error).

A mutation outranks every other outcome, a hang outranks the rest.
"""
from __future__ import annotations

import hashlib
import math
import pickle
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Iterator

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
from hypothesis.strategies import SearchStrategy

from graphlrp.errors import GraphLRPError

INF = float("inf")
KINDS = ("ok", "documented", "crash", "hang", "wrong", "mutation")
#: seconds one case may take before it counts as a hang
DEFAULT_SECONDS = 20.0


class WrongResult(AssertionError):
    """A result that fails a check: the door returned something it must not."""


class Hang(BaseException):
    """Raised by the alarm when a case runs past its time limit (a BaseException: no ``except Exception`` stops it)."""


@dataclass(frozen=True)
class Finding:
    """The outcome of one case: its kind and what was seen (the exception, the failed check)."""

    kind: str
    detail: str = ""


class Door:
    """A public entry point with a strategy of cases and the checks of the four guarantees.

    Subclasses set :attr:`name` and implement :meth:`cases`, :meth:`prepare` and :meth:`call`;
    :meth:`watched` and :meth:`verify` default to watching nothing and checking nothing.
    """

    name = ""
    #: the file of graphlrp whose owner answers for this door (grouping in reports)
    owner = ""
    #: exceptions the door may raise by contract
    documented: tuple[type[BaseException], ...] = (GraphLRPError,)

    def cases(self) -> SearchStrategy:
        """A hypothesis strategy of cases: small, reproducible descriptions of one call."""
        raise NotImplementedError

    def prepare(self, case: Any) -> Any:
        """The user's objects for ``case``, built afresh."""
        raise NotImplementedError

    def watched(self, setup: Any) -> dict[str, Any]:
        """The objects of ``setup`` the call must leave bit-identical, by name."""
        return {}

    def call(self, setup: Any) -> Any:
        """Call the entry point on ``setup``; return its result."""
        raise NotImplementedError

    def verify(self, setup: Any, result: Any) -> None:
        """Raise :class:`WrongResult` if ``result`` is not what the entry point promises."""

    def classify_error(self, error: BaseException) -> Finding:
        """``documented`` for the door's documented exceptions, ``crash`` for any other."""
        if isinstance(error, self.documented):
            return Finding("documented", type(error).__name__)
        return Finding("crash", describe(error))


def describe(error: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- time limit ---------------------------------------------------------------------------------
@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`Hang` in the block after ``seconds`` (no limit off the main thread or with ``None``)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise Hang(f"no answer after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- fingerprints -------------------------------------------------------------------------------
def fingerprint(value: Any, _seen: dict[int, Any] | None = None) -> Any:
    """A comparable, NaN-safe description of ``value`` holding every bit the user could observe.

    Tensors by dtype, shape, strides, ``requires_grad``, gradient and raw bytes; modules by every
    submodule's training flag, hooks, plain attributes, parameters and buffers; networkx graphs by
    their nodes, edges and attributes in order; files by their bytes; other objects by their
    public attributes, recursively (private ones hold caches).
    """
    seen = {} if _seen is None else _seen  # id -> object, kept alive so that no id is reused meanwhile
    if isinstance(value, (str, bytes, int, bool, type(None))):
        return value
    if isinstance(value, float):
        return ("float", value.hex()) if math.isfinite(value) else ("float", repr(value))
    if isinstance(value, torch.Tensor):
        return _tensor_print(value)
    if isinstance(value, np.ndarray):
        data = pickle.dumps(value) if value.dtype == object else value.tobytes()
        return ("ndarray", str(value.dtype), value.shape, value.strides, value.flags.writeable, data)
    if isinstance(value, Path):
        return ("file", str(value), _file_print(value))
    if id(value) in seen:
        return ("seen", type(value).__name__)
    seen[id(value)] = value
    if isinstance(value, nn.Module):
        return _module_print(value, seen)
    if isinstance(value, nx.Graph):
        return (
            type(value).__name__,
            fingerprint(dict(value.graph), seen),
            [(fingerprint(n, seen), fingerprint(dict(d), seen)) for n, d in value.nodes(data=True)],
            [(fingerprint(e[:-1], seen), fingerprint(dict(e[-1]), seen)) for e in _edges(value)],
        )
    if isinstance(value, dict):
        return ("dict", [(fingerprint(k, seen), fingerprint(v, seen)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [fingerprint(v, seen) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(fingerprint(v, seen)) for v in value))
    if is_dataclass(value):
        return (type(value).__name__, [(f.name, fingerprint(getattr(value, f.name), seen)) for f in fields(value)])
    if hasattr(value, "__dict__") and not callable(value):
        public = [(k, v) for k, v in vars(value).items() if not k.startswith("_")]  # private: caches
        return (type(value).__name__, [(k, fingerprint(v, seen)) for k, v in public])
    return ("object", type(value).__name__, repr(value))


def _edges(G: nx.Graph) -> list[tuple]:
    return list(G.edges(keys=True, data=True)) if G.is_multigraph() else list(G.edges(data=True))


def _tensor_print(t: torch.Tensor) -> tuple:
    data = t.detach()
    raw = data.cpu().contiguous().reshape(-1)
    if raw.numel() == 0:  # no bytes (numpy has no bfloat16, and an empty tensor may not be viewed as bytes)
        content = b""
    else:
        content = (raw.view(torch.uint8) if raw.dtype != torch.bool else raw).numpy().tobytes()
    grad = None if t.grad is None else _tensor_print(t.grad)
    return ("tensor", str(t.dtype), tuple(t.shape), t.stride(), str(t.device), t.requires_grad, grad,
            hashlib.sha256(content).hexdigest())


def _file_print(path: Path) -> str | None:
    if path.is_dir():
        return "directory"
    if not path.exists():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")


def _module_print(model: nn.Module, seen: dict[int, Any]) -> tuple:
    modules = []
    for path, module in model.named_modules(remove_duplicate=False):
        plain = sorted((k, repr(v)) for k, v in vars(module).items()
                       if not k.startswith("_") and isinstance(v, (int, float, bool, str, tuple, type(None))))
        hooks = [(h, len(getattr(module, h, {}) or {})) for h in _HOOKS]
        modules.append((path, type(module).__name__, module.training, plain, hooks))
    tensors = [(name, _tensor_print(t)) for name, t in model.named_parameters(remove_duplicate=False)]
    tensors += [(name, _tensor_print(t)) for name, t in model.named_buffers(remove_duplicate=False)]
    return ("module", modules, tensors, len(torch.nn.modules.module._global_forward_hooks))


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The names whose fingerprints differ."""
    return [name for name in before if before[name] != after.get(name)]


# -- running one case ---------------------------------------------------------------------------
class HarnessError(Exception):
    """The door's own code failed to build a case: a bug of the fuzz suite, never of graphlrp."""


def run_case(door: Door, case: Any, seconds: float | None = DEFAULT_SECONDS) -> Finding:
    """Run ``case`` through ``door`` and classify the outcome (see the module docstring)."""
    try:
        setup = door.prepare(case)
        before = {name: fingerprint(v) for name, v in door.watched(setup).items()}
    except Exception as error:
        raise HarnessError(f"{door.name}: preparing {case!r}: {describe(error)}") from error
    finding = _outcome(door, setup, seconds)
    after = {name: fingerprint(v) for name, v in door.watched(setup).items()}
    moved = changed(before, after)
    if moved:
        note = f" (the call itself: {finding.kind} {finding.detail})".rstrip() if finding.kind != "ok" else ""
        return Finding("mutation", f"changed: {', '.join(moved)}{note}")
    return finding


def _outcome(door: Door, setup: Any, seconds: float | None) -> Finding:
    try:
        with time_limit(seconds):
            try:
                result = door.call(setup)
            except Hang:
                raise
            except BaseException as error:  # noqa: BLE001 - every exception is classified
                if isinstance(error, KeyboardInterrupt):
                    raise
                return door.classify_error(error)
            try:
                door.verify(setup, result)
            except WrongResult as wrong:
                return Finding("wrong", " ".join(str(wrong).split())[:400])
            except Hang:
                raise
            except Exception as error:  # noqa: BLE001 - the result's own methods failed
                return Finding("crash", f"checking the result: {describe(error)}")
    except Hang as hang:
        return Finding("hang", str(hang))
    return Finding("ok")


# -- checks shared by doors ---------------------------------------------------------------------
def require(condition: bool, message: str) -> None:
    """Raise :class:`WrongResult` with ``message`` unless ``condition``."""
    if not condition:
        raise WrongResult(message)


def require_finite(name: str, tensor: torch.Tensor) -> None:
    """Every entry of ``tensor`` is finite."""
    bad = ~torch.isfinite(tensor.detach())
    require(not bool(bad.any()), f"{name} holds {int(bad.sum())} NaN/inf entries of {tensor.numel()}")


def require_close(name: str, actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float = 0.0) -> None:
    """``|actual - expected| <= atol + rtol · max(1, max |expected|)`` everywhere, shapes equal."""
    actual = torch.as_tensor(actual).detach().double().cpu()
    expected = torch.as_tensor(expected).detach().double().cpu()
    require(actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return
    same = (actual == expected) | (actual.isnan() & expected.isnan())  # equal infinities and NaNs agree
    difference = torch.where(same, torch.zeros_like(actual), (actual - expected).abs())
    finite = expected[torch.isfinite(expected)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    error = float(difference.nan_to_num(nan=INF).max())
    require(error <= atol + rtol * scale, f"{name}: differs by {error:.3g} (allowed {atol + rtol * scale:.3g}); "
                                          f"got {actual.flatten()[:6].tolist()}, expected {expected.flatten()[:6].tolist()}")


def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a comparison computed in ``dtype``: a small factor above its rounding."""
    return {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 5e-2, torch.bfloat16: 1e-1}[dtype]
