"""TorchScript models: the eager ``nn.Sequential`` that :func:`graphlrp.lower` takes.

A TorchScript module can neither be traced by ``torch.fx`` nor lowered directly. A scripted
``nn.Sequential`` (nested ones too) of the modules graphlrp lowers is rebuilt as an eager one of the
same modules sharing its parameters (:func:`from_torchscript`); :func:`check_rebuild` checks that
the rebuild computes what the scripted model computes. Any other scripted module (a custom
``forward``, a pruned layer's ``weight_orig``/``weight_mask``) is refused.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import UnsupportedModuleError
from .modules import HANDLERS

__all__ = ["SCRIPTED_TYPES", "check_rebuild", "from_torchscript"]

#: module types a TorchScript model may be made of, by their ``original_name``: those graphlrp lowers
SCRIPTED_TYPES: dict[str, type[nn.Module]] = {t.__name__: t for types in HANDLERS for t in types} | {
    "Sequential": nn.Sequential
}


def from_torchscript(scripted: torch.jit.ScriptModule) -> nn.Module:
    """An eager copy, in eval mode, of a TorchScript ``nn.Sequential`` of :data:`SCRIPTED_TYPES`.

    Each scripted module is rebuilt from its ``original_name``, the constructor arguments it keeps
    as attributes, and its parameters and buffers (shared, not copied). Nested ``nn.Sequential`` s
    keep their structure and child names, so levels are named as in the original model.

    Parameters
    ----------
    scripted : torch.jit.ScriptModule
        A scripted ``nn.Sequential`` (``torch.jit.script`` or ``torch.jit.load``); not modified.

    Returns
    -------
    nn.Module
        The eager ``nn.Sequential``, to lower with :func:`graphlrp.lower`.

    Raises
    ------
    UnsupportedModuleError
        For a module of another type (naming its path), or one whose state does not fit its type.
    """
    return _rebuild(scripted, "").eval()


def _rebuild(scripted: torch.jit.ScriptModule, path: str) -> nn.Module:
    """The eager twin of ``scripted``, found at ``path`` (child names joined by dots) in the model."""
    name = getattr(scripted, "original_name", type(scripted).__name__)
    kind = SCRIPTED_TYPES.get(name)
    where = f"TorchScript module {repr(path) if path else '(the model)'} ({name})"
    if kind is None:
        raise UnsupportedModuleError(
            f"{where} cannot be lowered: a TorchScript model must be an nn.Sequential of the modules graphlrp "
            "lowers (Linear, Conv, pooling, batch norm, element-wise activations, Flatten, Identity, dropout); "
            "give other models as module:function"
        )
    if kind is nn.Sequential:
        children = scripted.named_children()
        return nn.Sequential(OrderedDict((n, _rebuild(c, f"{path}.{n}" if path else n)) for n, c in children))
    module = kind(**_constructor_arguments(kind, scripted, where))
    try:
        module.load_state_dict(scripted.state_dict(), assign=True)
    except RuntimeError as error:  # e.g. a pruned layer's weight_orig and weight_mask
        detail = " ".join(str(error).split())
        raise UnsupportedModuleError(f"{where}: its state does not fit a {name}: {detail}") from None
    return module


def _constructor_arguments(kind: type[nn.Module], scripted: torch.jit.ScriptModule, where: str) -> dict[str, object]:
    """The arguments of ``kind(...)``, read from the attributes of the scripted module."""
    arguments: dict[str, object] = {}
    for name, parameter in inspect.signature(kind).parameters.items():
        if name in ("device", "dtype") or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name == "bias":  # a flag for the constructor, a tensor or None on the module
            arguments[name] = getattr(scripted, "bias", None) is not None
        elif hasattr(scripted, name):
            arguments[name] = getattr(scripted, name)
        elif parameter.default is parameter.empty:
            raise UnsupportedModuleError(f"{where}: does not record its constructor argument {name!r}")
    return arguments


def check_rebuild(scripted: torch.jit.ScriptModule, rebuilt: nn.Module, example_input: Tensor) -> None:
    """Check that the eager ``rebuilt`` computes what ``scripted`` computes on ``example_input``.

    Parameters
    ----------
    scripted : torch.jit.ScriptModule
        The TorchScript model.
    rebuilt : nn.Module
        Its rebuild, :func:`from_torchscript` of it.
    example_input : Tensor
        A batch both models take.

    Raises
    ------
    UnsupportedModuleError
        When the outputs differ in shape, or beyond a relative and absolute ``1e-4`` (scaled by the
        largest output of at least one).
    """
    with torch.no_grad():
        expected = scripted(example_input)
        actual = rebuilt(example_input)
    scale = float(expected.abs().max().clamp(min=1.0)) if expected.numel() else 1.0
    if actual.shape != expected.shape or not torch.allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale):
        raise UnsupportedModuleError(
            "the eager rebuild of the TorchScript model computes something else than the model "
            "(a module with a custom forward?); give the model as module:function"
        )
