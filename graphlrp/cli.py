"""The ``graphlrp`` command: explain a saved model from the shell (also ``python -m graphlrp``).

Subcommands::

    graphlrp explain MODEL INPUTS --out relevance.npy [--edges edges.graphml] [--verbose]
    graphlrp paths   MODEL INPUTS [--sample 0] [--k 5] [--json]
    graphlrp circuit MODEL INPUTS [--sample 0] [--fraction 0.9] [--edges circuit.json] [--draw circuit.png]
    graphlrp plot    MODEL INPUTS --out heatmaps.png [--samples 8]

Models
------
``MODEL`` is one of

- a program saved with ``torch.export`` (``torch.export.save(torch.export.export(model, (x,)), 'model.pt2')``),
  lowered from its ATen operators (:mod:`graphlrp.frontends.exported`): any model that export can
  record and graphlrp can lower, without its Python code;
- a TorchScript file (``torch.jit.save``, deprecated by torch) of an ``nn.Sequential`` (nested ones too) of the modules
  graphlrp lowers (:data:`graphlrp.frontends.torchscript.SCRIPTED_TYPES`: ``Linear``,
  ``Conv1d/2d/3d``, max, average and adaptive average pooling, batch norm, element-wise
  activations such as ``ReLU``, ``Flatten``/``Unflatten``, ``Identity``, dropout). A TorchScript
  module can neither be traced by ``torch.fx`` nor lowered directly, so it is rebuilt as an eager
  ``nn.Sequential`` of the same modules sharing its parameters
  (:func:`graphlrp.frontends.from_torchscript`), and the rebuild is checked to compute what the
  TorchScript model computes (:func:`graphlrp.frontends.torchscript.check_rebuild`). Any other
  scripted module (a custom ``forward``, a pruned layer's ``weight_orig``/``weight_mask``) is
  refused with exit code 4: give such models as ``module:function``.
- ``module:function`` or ``path/to/file.py:function``: the function is called without arguments
  and returns the model (any ``nn.Module`` that :func:`graphlrp.lower` takes). A module name is
  imported with the current directory on ``sys.path``; a file with its own directory on it.

The model is put in eval mode; ``--device`` puts it and the inputs on a device (default the CPU). ``INPUTS`` is a ``.pt`` file (``torch.save`` of one tensor) or a
``.npy`` file, batch first ``(N, *input_shape)``; it is converted to the dtype of the model's
parameters.

Results (tables, JSON, conservation) go to stdout; progress lines (one per batch of ``explain``)
and notes on the files written go to stderr, and ``--quiet`` silences them.

Exit codes
----------
0 success; 1 unexpected error (a bug); 2 bad usage or arguments (including a rule parameter out of
range, or beyond the range of the model's dtype); 3 a file cannot be read or written (missing,
unreadable or of another kind: a state_dict or a pickled module given as MODEL, model function
that fails); 4 the model cannot be lowered or explained (unsupported module, graph too large,
inputs of the wrong shape or not finite, target out of range, relevance that would not be finite).

Every failure prints one line, ``graphlrp: error: ...``, on stderr; ``--debug`` adds the traceback.
Errors of the library map to exit codes by their class (:data:`EXIT_CODES`). No relevance that is
NaN or infinite is ever written: the command checks every result first and exits 4.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
from importlib.machinery import SourceFileLoader
import inspect
import json
import os
import pickle
import sys
import traceback
import warnings
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Sequence

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from . import __version__, analysis, composites, export, plot, rules
from .blocks import general_kinds
from .composites import Composite
from .errors import (
    ArgumentTypeError,
    CycleError,
    DeviceError,
    FileFormatError,
    GraphLRPError,
    GraphTooLargeError,
    IndexOutOfRangeError,
    InputError,
    LoweringMismatchError,
    NumericRangeError,
    RuleParameterError,
    UnsupportedModuleError,
)
from .devices import check_available
from .explainer import explain
from .explanation import Explanation
from .graph import Graph
from .frontends import lower
from .frontends.builder import ATTENTION_RULES
from .frontends.exported import from_exported
from .frontends.torchscript import check_rebuild, from_torchscript
from .rules import Rule

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FILE = 3
EXIT_MODEL = 4

EPILOG = """\
MODEL is a program saved by torch.export.save (.pt2), a TorchScript file (torch.jit.save) of an
nn.Sequential of supported modules, or module:function / path/to/file.py:function returning an nn.Module. INPUTS is a .pt (torch.save
of a tensor) or .npy file, batch first.

exit codes (every failure prints one line; --debug adds the traceback):
  0  success
  1  unexpected error (a bug)
  2  bad usage or arguments
  3  a file cannot be read or written (missing, unreadable, or not a model / a tensor)
  4  the model cannot be lowered or explained (unsupported, too large, wrong input shape, NaN or inf
     inputs, bad target, relevance that would not be finite)
"""

#: rule parameters with an option of their own (``--epsilon`` applies to every rule and composite)
PARAMETER_OPTIONS = ("gamma", "alpha", "beta", "low", "high")
#: the ``--rule`` choices: the registered rules (:func:`graphlrp.rules.register_rule`)
RULES = rules.names()
#: the ``--composite`` choices: the registered composites (:func:`graphlrp.composites.register_composite`)
COMPOSITES = composites.names()


def _accepts(method: type, parameter: str) -> bool:
    """Whether the rule or composite class ``method`` takes ``parameter``."""
    return parameter in inspect.signature(method).parameters


#: the --rule / --composite choices that use each rule parameter, read from their constructors
PARAMETER_USERS: dict[str, tuple[str, ...]] = {
    parameter: tuple(name for name, method in chain(rules.RULES.items(), composites.COMPOSITES.items())
                     if _accepts(method, parameter))
    for parameter in PARAMETER_OPTIONS
}

#: the exit code of each error, found by the first of the error's classes (its ``__mro__``) listed.
#: A wrong argument type is the command's own bug: it builds every argument the library gets.
EXIT_CODES: dict[type[BaseException], int] = {
    FileFormatError: EXIT_FILE,
    OSError: EXIT_FILE,
    InputError: EXIT_MODEL,
    IndexOutOfRangeError: EXIT_MODEL,
    RuleParameterError: EXIT_MODEL,
    NumericRangeError: EXIT_MODEL,
    UnsupportedModuleError: EXIT_MODEL,
    LoweringMismatchError: EXIT_MODEL,
    CycleError: EXIT_MODEL,
    GraphTooLargeError: EXIT_MODEL,
    ArgumentTypeError: EXIT_ERROR,
    GraphLRPError: EXIT_MODEL,
    # built-in types that library functions document beside graphlrp's classes; a stage names
    # those it expects (see _failing), elsewhere they are bugs (EXIT_ERROR)
    ValueError: EXIT_MODEL,
    IndexError: EXIT_MODEL,
    MemoryError: EXIT_MODEL,
    RuntimeError: EXIT_MODEL,
}
#: built-in errors of lowering: running the model on inputs it cannot take raises RuntimeError
LOWER_BUILTINS: tuple[type[BaseException], ...] = (ValueError, IndexError, RuntimeError)
#: built-in errors of explaining, listing edges, paths and circuits
EXPLAIN_BUILTINS: tuple[type[BaseException], ...] = (ValueError, IndexError, MemoryError)


def exit_code(error: BaseException) -> int:
    """The exit code of ``error``: :data:`EXIT_CODES` of its most specific listed class, else ``EXIT_ERROR``."""
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return EXIT_ERROR


class CliError(Exception):
    """A failure to report in one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def _failing(what: str, builtins: tuple[type[BaseException], ...] = (), code: int | None = None) -> Iterator[None]:
    """Turn graphlrp's errors and ``builtins`` raised inside into a :class:`CliError` ``what: <first line>``.

    The exit code is ``code``, or by default the error's :func:`exit_code`.
    """
    try:
        yield
    except (GraphLRPError, *builtins) as error:
        raise CliError(f"{what}: {_summary(error)}", exit_code(error) if code is None else code) from error


def _summary(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type when it has none), at most ``limit`` characters."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- argument types -----------------------------------------------------------------------------
def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


def _finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    value = float(text)
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    """An argparse type: a finite number ``>= 0``."""
    value = float(text)
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number in ``(0, 1]``."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def _target(text: str) -> int | str:
    """An argparse type: a class index ``>= 0``, or ``'predicted'``."""
    if text == "predicted":
        return text
    if not text.isdecimal():
        raise argparse.ArgumentTypeError(f"must be a class index >= 0 or 'predicted', got {text!r}")
    return int(text)


def _device(text: str) -> torch.device:
    try:
        return check_available(text)
    except DeviceError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _path_with_suffix(*suffixes: str) -> Callable[[str], Path]:
    """An argparse type: a path ending in one of ``suffixes`` (any case)."""

    def parse(text: str) -> Path:
        path = Path(text)
        if path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text!r} must end in {' or '.join(suffixes)}")
        return path

    parse.__name__ = "file name"
    return parse


# -- models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedModel:
    """A model to lower: an eager module, and the TorchScript module it was rebuilt from, if any."""

    module: nn.Module
    scripted: torch.jit.ScriptModule | None = None


def load_model(spec: str) -> LoadedModel:
    """Load ``MODEL``.

    Parameters
    ----------
    spec : str
        A TorchScript file, or ``module:function`` / ``path/to/file.py:function`` (see the module
        docstring).

    Returns
    -------
    LoadedModel
        The eager model in eval mode (rebuilt from TorchScript, see
        :func:`~graphlrp.frontends.from_torchscript`).

    Raises
    ------
    CliError
        ``EXIT_FILE`` for a missing or unreadable file, a failing import or function;
        ``EXIT_MODEL`` for a TorchScript model that cannot be rebuilt (see
        :func:`~graphlrp.frontends.from_torchscript`).
    FileFormatError
        For a file that is not a TorchScript model (a state_dict, a pickled module, an array),
        saying what it is; nothing in it is unpickled.
    """
    if Path(spec).is_file():
        if _is_exported_program(Path(spec)):
            return LoadedModel(_load_exported(Path(spec)))
        scripted = _load_torchscript(Path(spec))
        with _failing("cannot lower the model"):
            return LoadedModel(from_torchscript(scripted), scripted)
    if ":" in spec:
        return LoadedModel(_call_factory(spec).eval())
    raise CliError(f"model {spec!r}: no such file (give a TorchScript file, or module:function)", EXIT_FILE)


#: what a model file must be, ending every error about one
MODEL_FILE_HINT = ("a model file must be a program saved by torch.export.save (.pt2) or a TorchScript file "
                   "(torch.jit.save(torch.jit.script(model), path)); give any other model as module:function, "
                   "a function that returns it")


def _is_exported_program(path: Path) -> bool:
    """Whether ``path`` is a ``torch.export.save`` archive: a zip file holding an ``archive_format`` entry."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.rsplit("/", 1)[-1] == "archive_format" for name in archive.namelist())


def _load_exported(path: Path) -> nn.Module:
    """The module of the program in ``path`` (:func:`~graphlrp.frontends.exported.from_exported`)."""
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # torch reports unreadable archives with many kinds of errors
        raise FileFormatError(f"cannot read {path} as a torch.export program: {_summary(error)}; "
                              f"{MODEL_FILE_HINT}") from error
    return from_exported(program)


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """``torch.jit.load`` on the CPU, in eval mode, of a file checked to be a TorchScript archive.

    Raises
    ------
    FileFormatError
        For another kind of file (:func:`_check_torchscript_archive`), or an archive torch cannot read.
    """
    _check_torchscript_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # torch reports unreadable archives with RuntimeError, ValueError, KeyError, ...
        raise FileFormatError(f"cannot read {path} as a TorchScript model: {_summary(error)}; "
                              f"{MODEL_FILE_HINT}") from error


def _check_torchscript_archive(path: Path) -> None:
    """Raise :class:`FileFormatError`, saying what the file is, unless it is a TorchScript archive.

    A TorchScript archive is a zip file with ``constants.pkl``; ``torch.save`` writes one without.
    """
    with path.open("rb") as file:
        head = file.read(8)
    if not zipfile.is_zipfile(path):
        if head.startswith(b"\x93NUMPY"):
            kind = "a numpy array (.npy)"
        elif head[:1] == b"\x80":
            kind = "a pickle (pickle.dump, or torch.save in its legacy format), which is not unpickled"
        else:
            kind = "not a TorchScript archive (not a zip file)"
        raise FileFormatError(f"cannot read {path} as a TorchScript model: it is {kind}; {MODEL_FILE_HINT}")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(name.endswith("constants.pkl") for name in names):
        return
    if any(name.endswith("data.pkl") for name in names):
        raise FileFormatError(f"cannot read {path} as a TorchScript model: it is {_saved_object(path)}; "
                              f"{MODEL_FILE_HINT}")
    raise FileFormatError(f"cannot read {path} as a TorchScript model: it is a zip archive of another kind; "
                          f"{MODEL_FILE_HINT}")


def _saved_object(path: Path) -> str:
    """What a ``torch.save`` file holds, read with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return ("an object pickled by torch.save, such as a whole nn.Module, which is not unpickled (loading it "
                "could run arbitrary code)")
    except Exception:  # noqa: BLE001 - only describing a file already refused
        return "a torch.save file that torch.load cannot read"
    if isinstance(saved, Mapping) and saved and all(isinstance(v, Tensor) for v in saved.values()):
        return ("a state_dict saved by torch.save: parameters without the architecture (a module:function can "
                "build the model and load them with model.load_state_dict(torch.load(path)))")
    return f"a {type(saved).__name__} saved by torch.save"


def _call_factory(spec: str) -> nn.Module:
    """The ``nn.Module`` that ``module:function`` returns; any failure is ``EXIT_FILE``."""
    location, _, name = spec.rpartition(":")
    module = _import(location)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise CliError(f"model {spec!r}: {location} has no function {name!r}", EXIT_FILE)
    with _failing(f"model {spec!r}: calling {name}() failed", (Exception,), EXIT_FILE):
        model = factory()
    if not isinstance(model, nn.Module):
        raise CliError(f"model {spec!r}: {name}() returned a {type(model).__name__}, not a torch.nn.Module", EXIT_FILE)
    return model


def _import(location: str) -> ModuleType:
    """Import a module by name (the current directory on ``sys.path``) or a ``.py`` file by path."""
    is_file = location.endswith(".py") or "/" in location or os.sep in location
    if is_file and not Path(location).is_file():
        raise CliError(f"no such model file: {location}", EXIT_FILE)
    directory = str(Path(location).resolve().parent) if is_file else os.getcwd()
    if directory not in sys.path:
        sys.path.insert(0, directory)
    # any exception: importing runs the module's own code
    with _failing(f"cannot import {location}", (Exception,), EXIT_FILE):
        if not is_file:
            return importlib.import_module(location)
        name = f"_graphlrp_model_{Path(location).stem}"
        spec = importlib.util.spec_from_file_location(name, location, loader=SourceFileLoader(name, location))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


def _float_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first floating-point parameter or buffer (default dtype without)."""
    for tensor in chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


# -- inputs and outputs -------------------------------------------------------------------------
def load_inputs(path: Path) -> Tensor:
    """A batch ``(N, ...)``, ``N >= 1``, from a ``.pt`` or ``.npy`` file.

    Parameters
    ----------
    path : Path
        ``torch.save`` of one tensor (read with ``weights_only=True``) or a numpy ``.npy`` file
        (read without pickles).

    Raises
    ------
    CliError
        ``EXIT_FILE`` for a missing or unreadable file (pickled objects are refused, not loaded).
    FileFormatError
        For a file that holds something else than a tensor of real numbers.
    InputError
        For a tensor that is not a batch: fewer than two dimensions, or no sample.
    """
    if not path.is_file():
        raise CliError(f"no such inputs file: {path}", EXIT_FILE)
    # any exception: torch.load and numpy.load report corrupt files with many exception types
    with _failing(f"cannot read inputs from {path}", (Exception,), EXIT_FILE), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the error says it all
        if path.suffix.lower() == ".npy":
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, Tensor):
        raise FileFormatError(f"{path} holds a {type(data).__name__}, not a tensor")
    if data.is_complex():
        raise FileFormatError(f"{path} holds complex numbers ({data.dtype}), not real ones")
    if data.dim() < 2 or len(data) == 0:
        raise InputError(f"{path}: inputs must be a batch (N, ...) of N >= 1 samples, got shape {tuple(data.shape)}")
    return data


def _as_model_dtype(inputs: Tensor, dtype: torch.dtype, path: Path) -> Tensor:
    """``inputs`` in the model's ``dtype``; :class:`InputError` naming the samples not finite there."""
    converted = inputs.to(dtype)
    bad = (~torch.isfinite(converted.reshape(len(converted), -1))).any(1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} samples)" if len(bad) > 10 else "")
        raise InputError(f"{path}: sample(s) {shown} hold NaN or inf in the model's dtype {dtype} (values beyond "
                         f"±{torch.finfo(dtype).max:.4g} become inf): their relevance is not defined")
    return converted


def _check_finite(values: Tensor, what: str) -> None:
    """Raise :class:`NumericRangeError` unless every value is finite: no NaN or inf leaves the command."""
    if not bool(torch.isfinite(values).all()):
        raise NumericRangeError(f"{what} is not finite (NaN or inf) in {values.dtype}: nothing is written; "
                                "use smaller rule parameters, or a float64 model")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Create ``path``'s directory, then write inside; failures to write become ``EXIT_FILE``."""
    with _failing(f"cannot write {path}", (OSError,), EXIT_FILE):
        path.parent.mkdir(parents=True, exist_ok=True)
        yield


def save_tensor(tensor: Tensor, path: Path) -> None:
    """Write ``tensor`` as ``.npy`` (numpy) or ``.pt`` (``torch.save``), by ``path``'s suffix."""
    with _writing(path):
        if path.suffix.lower() == ".npy":
            np.save(path, tensor.numpy())
        else:
            torch.save(tensor, path)


def _write_graph(G: nx.DiGraph, path: Path) -> None:
    """Write a networkx graph as GraphML or node-link JSON, by ``path``'s suffix."""
    with _writing(path):
        (export.write_graphml if path.suffix.lower() == ".graphml" else export.write_json)(G, path)


def _log(args: argparse.Namespace, message: str) -> None:
    """Progress and notes go to stderr (results to stdout), unless ``--quiet``."""
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# -- rules --------------------------------------------------------------------------------------
def relevance_method(args: argparse.Namespace, inputs: Tensor) -> dict[str, Rule | Composite]:
    """``{'rule': ...}`` or ``{'composite': ...}`` for :func:`graphlrp.explain`, from the options.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``--rule`` or ``--composite`` and their parameters.
    inputs : Tensor
        The inputs, whose minimum and maximum are z-box's default bounds.

    Raises
    ------
    CliError
        ``EXIT_USAGE`` for an unknown rule or composite name (listing the accepted ones), a
        parameter the chosen rule does not use, out of range, or beyond the range of the inputs'
        dtype (the model's).
    """
    if args.composite is not None:
        option, method, registered = "--composite", args.composite, composites.COMPOSITES
    else:
        option, method, registered = "--rule", args.rule, rules.RULES
    if method not in registered:
        raise CliError(f"unknown {option} {method!r}; accepted: {', '.join(registered)}", EXIT_USAGE)
    for name, users in PARAMETER_USERS.items():
        if getattr(args, name) is not None and method not in users:
            raise CliError(f"--{name} applies only to {' or '.join(users)}, not to {method}", EXIT_USAGE)
    _check_in_dtype(args, inputs.dtype)
    with _failing(f"bad parameters for {method}", (ValueError,), EXIT_USAGE):
        return {option[2:]: registered[method](**_parameters(registered[method], args, inputs))}


def _parameters(method: type, args: argparse.Namespace, inputs: Tensor) -> dict[str, object]:
    """The options for the constructor of ``method``: those it takes, with the command's defaults."""
    parameters: dict[str, object] = {"epsilon": args.epsilon}
    if _accepts(method, "gamma") and args.gamma is not None:
        parameters["gamma"] = args.gamma
    if _accepts(method, "alpha"):
        parameters["alpha"], parameters["beta"] = _alpha_beta(args)
    if _accepts(method, "low"):
        parameters["low"], parameters["high"] = _bounds(args, inputs)
    return parameters


def _check_in_dtype(args: argparse.Namespace, dtype: torch.dtype) -> None:
    """Refuse (``EXIT_USAGE``) a rule parameter beyond the largest number of ``dtype``: it would be inf."""
    largest = torch.finfo(dtype).max
    for name in ("epsilon", *PARAMETER_OPTIONS):
        value = getattr(args, name)
        if value is not None and abs(value) > largest:
            raise CliError(f"--{name} {value:g} is beyond the range of the model's {dtype} (largest {largest:.4g})",
                           EXIT_USAGE)


def _alpha_beta(args: argparse.Namespace) -> tuple[float, float]:
    """α and β, the missing one derived from ``α − β = 1`` (default 2 and 1)."""
    if args.alpha is not None:
        return args.alpha, args.beta if args.beta is not None else args.alpha - 1
    beta = args.beta if args.beta is not None else 1.0
    return beta + 1, beta


def _bounds(args: argparse.Namespace, inputs: Tensor) -> tuple[float, float]:
    """``--low`` and ``--high``, by default the smallest and largest value in the inputs."""
    low = args.low if args.low is not None else float(inputs.min())
    high = args.high if args.high is not None else float(inputs.max())
    return low, high


# -- lowering and explaining --------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What every subcommand starts from: the model, the inputs in its dtype, and how to explain."""

    model: LoadedModel
    inputs: Tensor
    method: dict[str, Rule | Composite]


def _prepare(args: argparse.Namespace) -> Job:
    """Load the inputs and the model, and choose the rule: everything before lowering; the model
    and the inputs go to ``--device``."""
    inputs = load_inputs(args.inputs)
    model = load_model(args.model)
    inputs = _as_model_dtype(inputs, _float_dtype(model.module), args.inputs).to(args.device)
    model.module.to(args.device)
    if model.scripted is not None:
        model.scripted.to(args.device)
    return Job(model, inputs, relevance_method(args, inputs))


def _one_sample(args: argparse.Namespace, job: Job) -> Tensor:
    """Sample ``--sample`` of the inputs, as a batch of one."""
    if args.sample >= len(job.inputs):
        raise CliError(f"--sample {args.sample} is out of range for the {len(job.inputs)} samples in {args.inputs}",
                       EXIT_USAGE)
    return job.inputs[args.sample : args.sample + 1]


def _lower(args: argparse.Namespace, model: LoadedModel, example: Tensor) -> Graph:
    """Lower the model on ``example``; a TorchScript model's rebuild is checked against it there."""
    with _failing("cannot lower the model", LOWER_BUILTINS):
        graph = lower(model.module, example, block_kind=args.block_kind, max_pool=args.max_pool,
                      max_edges=args.max_edges, attention=args.attention)
        if model.scripted is not None:
            check_rebuild(model.scripted, model.module, example)
    return graph


def _targets(args: argparse.Namespace, graph: Graph, batch: Tensor) -> Tensor:
    """The class to explain per sample: ``--target``, or the predicted (largest) output."""
    if args.target != "predicted":
        classes = len(graph.outputs)
        if args.target >= classes:
            raise IndexOutOfRangeError(f"--target {args.target} is out of range: the model has {classes} outputs "
                                       f"(0..{classes - 1})")
        return torch.full((len(batch),), args.target, dtype=torch.long, device=batch.device)
    with torch.no_grad():
        return graph(batch).reshape(len(batch), -1).argmax(1)


def _explain(
    args: argparse.Namespace, job: Job, graph: Graph, batch: Tensor, first: int
) -> tuple[Explanation, Tensor]:
    """Explain ``batch``, samples ``first..`` of the inputs, for its targets; returns the explanation and targets.

    Raises
    ------
    CliError
        For an error of the library, naming the samples.
    NumericRangeError
        For relevance that is not finite.
    """
    samples = f"samples {first}..{first + len(batch) - 1}" if len(batch) > 1 else f"sample {first}"
    with _failing(f"cannot explain {samples}", EXPLAIN_BUILTINS):
        targets = _targets(args, graph, batch)
        explanation = explain(graph, batch, target=targets, **job.method)
    _check_finite(explanation.node_relevance, f"the relevance of {samples}")
    return explanation, targets


def _explain_sample(args: argparse.Namespace) -> tuple[Explanation, int]:
    """Lower the model on sample ``--sample`` alone and explain it; returns it and its target class."""
    job = _prepare(args)
    x = _one_sample(args, job)
    explanation, targets = _explain(args, job, _lower(args, job.model, x), x, args.sample)
    return explanation, int(targets[0])


def _relevance_batches(args: argparse.Namespace, job: Job, graph: Graph) -> Iterator[Tensor]:
    """Input relevance, batch by batch, with a progress line per batch and ``--verbose`` tables."""
    total = len(job.inputs)
    for start in range(0, total, args.batch_size):
        batch = job.inputs[start : start + args.batch_size]
        explanation, _ = _explain(args, job, graph, batch, start)
        if args.verbose:
            print(f"conservation, samples {start}..{start + len(batch) - 1} (summed):")
            print(explanation.conservation_table())
        _log(args, f"explain: {start + len(batch)}/{total} samples")
        yield explanation.input_relevance.detach().cpu()


def _edge_graph(args: argparse.Namespace, explanation: Explanation, **selection: float | None) -> nx.DiGraph:
    """Sample 0 of ``explanation`` (sample ``--sample`` of the inputs) as a networkx graph."""
    with _failing("cannot list the edges", EXPLAIN_BUILTINS):
        G = export.explanation_to_networkx(explanation, 0, **selection)
    _check_finite(torch.tensor([r for _, _, r in G.edges(data="relevance")], dtype=torch.float64),
                  f"the edge relevance of sample {args.sample}")
    G.graph["samples"] = (args.sample,)
    return G


# -- subcommands --------------------------------------------------------------------------------
def run_explain(args: argparse.Namespace) -> None:
    """``explain``: input relevance of every sample to ``--out``; optionally one sample's edges."""
    job = _prepare(args)
    x = _one_sample(args, job)
    graph = _lower(args, job.model, job.inputs[: args.batch_size])
    relevance = torch.cat(list(_relevance_batches(args, job, graph)))
    save_tensor(relevance, args.out)
    _log(args, f"wrote input relevance {tuple(relevance.shape)} to {args.out}")
    if args.edges is not None:
        explanation, _ = _explain(args, job, graph, x, args.sample)
        G = _edge_graph(args, explanation, top_k=args.top_k, threshold=args.threshold, mass=args.mass)
        _write_graph(G, args.edges)
        _log(args, f"wrote {G.number_of_edges():,} of {graph.num_edges:,} edges of sample {args.sample} "
                   f"to {args.edges}")


def run_paths(args: argparse.Namespace) -> None:
    """``paths``: the ``--k`` most relevant input-to-output paths of one sample."""
    explanation, _ = _explain_sample(args)
    with _failing("cannot find paths", EXPLAIN_BUILTINS):
        paths = analysis.top_paths(explanation, 0, target=args.target_node, k=args.k, score=args.score)
    _check_finite(torch.tensor([path.score for path in paths], dtype=torch.float64), "a path's score")
    if args.json:
        print(json.dumps([asdict(path) for path in paths], indent=2))
    else:
        print(_paths_table(paths))


def _paths_table(paths: Sequence[analysis.Path]) -> str:
    """Paths as a text table: rank, score, and the nodes' labels joined by arrows."""
    rows = [("rank", "score", "path")]
    rows += [(str(i), f"{p.score:+.6g}", " -> ".join(p.labels)) for i, p in enumerate(paths, 1)]
    widths = [max(len(row[c]) for row in rows) for c in range(2)]
    return "\n".join(f"{r[0].ljust(widths[0])}  {r[1].ljust(widths[1])}  {r[2]}" for r in rows)


def run_circuit(args: argparse.Namespace) -> None:
    """``circuit``: the fewest edges carrying ``--fraction`` of one sample's relevance, and its faithfulness."""
    explanation, target = _explain_sample(args)
    with _failing("cannot find the circuit", EXPLAIN_BUILTINS):
        circuit = analysis.relevant_circuit(explanation, 0, args.fraction)
    _check_finite(circuit.relevance, f"the edge relevance of sample {args.sample}")
    total = explanation.graph.num_edges
    kept = len(circuit.edges)
    print(f"sample {args.sample}, target class {target}")
    print(f"edges kept: {kept:,} of {total:,} ({kept / max(total, 1):.2%}), "
          f"carrying {circuit.fraction:.2%} of |edge relevance|")
    print(_faithfulness(circuit, target))
    if args.edges is not None:
        G = _edge_graph(args, explanation, mass=args.fraction)
        _write_graph(G, args.edges)
        _log(args, f"wrote the circuit's {G.number_of_edges():,} edges to {args.edges}")
    if args.draw is not None:
        with _plotting("--draw"), _failing("cannot draw the circuit"), _writing(args.draw):
            plot.draw_circuit(circuit, args.draw)
        _log(args, f"drew the circuit to {args.draw}")


@contextmanager
def _plotting(option: str) -> Iterator[None]:
    """A missing matplotlib is ``EXIT_USAGE``: ``option`` needs it."""
    try:
        yield
    except ImportError as error:
        raise CliError(f"{option} needs matplotlib: {_summary(error)}", EXIT_USAGE) from error


def _faithfulness(circuit: analysis.Circuit, target: int) -> str:
    """The target's output with the full network and with the circuit alone, as one line."""
    try:
        result = circuit.faithfulness()
    except (GraphLRPError, ValueError) as error:  # max pooling: a circuit's edges depend on the sample
        return f"faithfulness: not available ({_summary(error)})"
    full, alone = result.output.flatten(), result.circuit_output.flatten()
    worst = float((full - alone).abs().max())
    return (f"faithfulness: output[{target}] full {float(full[target]):+.6g}, circuit {float(alone[target]):+.6g} "
            f"(difference {float(alone[target] - full[target]):+.3g}; largest over all outputs {worst:.3g})")


def run_plot(args: argparse.Namespace) -> None:
    """``plot``: heatmaps of the input relevance of the first ``--samples`` samples."""
    job = _prepare(args)
    if job.inputs.dim() not in (3, 4):
        raise InputError(f"plot needs image-shaped inputs, (N, H, W) or (N, C, H, W); {args.inputs} holds "
                         f"{tuple(job.inputs.shape)}")
    x = job.inputs[: args.samples]
    explanation, targets = _explain(args, job, _lower(args, job.model, x), x, 0)
    with _plotting("plot"), _failing("cannot draw the heatmaps"), _writing(args.out):
        plot.save_heatmaps(explanation, args.out, inputs=x,
                           titles=[f"#{i}: class {t}" for i, t in enumerate(targets.tolist())])
    _log(args, f"wrote heatmaps of {len(x)} samples to {args.out}")


# -- the parser ---------------------------------------------------------------------------------
def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Add what every subcommand takes: the model, the inputs, the rule and the lowering."""
    parser.add_argument("model", metavar="MODEL",
                        help="program saved by torch.export.save (.pt2), TorchScript file (torch.jit.save) of an "
                             "nn.Sequential of supported modules, or module:function / path/to/file.py:function "
                             "returning an nn.Module")
    parser.add_argument("inputs", metavar="INPUTS", type=_path_with_suffix(".pt", ".npy"),
                        help="inputs, batch first: .pt (torch.save of a tensor) or .npy")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or notes on stderr")
    parser.add_argument("--device", type=_device, default=torch.device("cpu"), metavar="DEVICE",
                        help="where the model, the inputs and the graph go: cpu (default), cuda, cuda:N, mps")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback of a failure")
    relevance = parser.add_argument_group("relevance")
    relevance.add_argument("--target", type=_target, default="predicted", metavar="INT|predicted",
                           help="class to explain, for every sample, or each sample's predicted (largest) "
                                "output (default: %(default)s)")
    which = relevance.add_mutually_exclusive_group()
    which.add_argument("--rule", choices=RULES, default="epsilon",
                       help="one LRP rule for every layer (default: %(default)s, unless --composite)")
    which.add_argument("--composite", choices=COMPOSITES,
                       help="a rule per layer type, as Zennit's presets: z+, alpha-beta or gamma (z-box on the "
                            "first) on convolutions, epsilon on dense layers (default: none, use --rule)")
    relevance.add_argument("--epsilon", metavar="X", type=_nonnegative_float, default=1e-6,
                           help="epsilon of the epsilon rule (and of a composite's dense layers), the stabilizer "
                                "of the other rules (default: %(default)s)")
    relevance.add_argument("--gamma", metavar="X", type=_nonnegative_float,
                           help="gamma of --rule gamma and --composite epsilon-gamma-box (default: 0.25)")
    relevance.add_argument("--alpha", metavar="X", type=_nonnegative_float,
                           help="alpha of --rule alphabeta, alpha - beta = 1 (default: 2, or --beta + 1)")
    relevance.add_argument("--beta", metavar="X", type=_nonnegative_float,
                           help="beta of --rule alphabeta (default: 1, or --alpha - 1)")
    relevance.add_argument("--low", metavar="X", type=_finite_float,
                           help="lowest input value, for --rule zbox and --composite epsilon-gamma-box "
                                "(default: the inputs' minimum)")
    relevance.add_argument("--high", metavar="X", type=_finite_float,
                           help="highest input value, for --rule zbox and --composite epsilon-gamma-box "
                                "(default: the inputs' maximum)")
    lowering = parser.add_argument_group("lowering")
    lowering.add_argument("--max-pool", choices=("winner", "proportional"), default="winner",
                          help="max pooling sends relevance to the window's winner, or splits it in proportion "
                               "to the inputs (default: %(default)s)")
    lowering.add_argument("--block-kind", choices=("auto", *general_kinds()), default="auto",
                          help="how dense layers' edges are stored (default: %(default)s: by density)")
    lowering.add_argument("--attention", choices=ATTENTION_RULES, default="cp-lrp",
                          help="attention's rule: the probabilities held constant (cp-lrp), or relevance "
                               "through the softmax into queries and keys too (attnlrp) (default: %(default)s)")
    lowering.add_argument("--max-edges", type=_int_at_least(1), metavar="N",
                          help="refuse (exit code 4) a graph with more edges (default: no limit; graphs larger "
                               "than half the available memory are always refused)")


def _subcommand(
    subparsers: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], None],
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    """A subcommand's parser, with the common options, running ``run``."""
    parser = subparsers.add_parser(name, help=summary, description=description, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common_options(parser)
    parser.set_defaults(run=run)
    return parser


def _add_sample(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str) -> None:
    """Add ``--sample``, the index of one sample of the inputs."""
    parser.add_argument("--sample", type=_int_at_least(0), default=0, metavar="I",
                        help=f"index of the sample {what} (default: %(default)s)")


def _add_explain(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` subcommand and its own options."""
    parser = _subcommand(
        subparsers, "explain", run_explain, "input relevance of every sample, optionally one sample's edges",
        "Explain every sample of INPUTS and write the input relevance, shaped like INPUTS, to --out. With "
        "--edges, also write the relevance of every edge for one sample (--sample).")
    parser.add_argument("--out", required=True, metavar="FILE", type=_path_with_suffix(".pt", ".npy"),
                        help="where to write the input relevance: .pt (torch.save) or .npy (required)")
    parser.add_argument("--batch-size", type=_int_at_least(1), default=64, metavar="N",
                        help="samples explained at once; a progress line follows each batch (default: "
                             "%(default)s)")
    parser.add_argument("--verbose", action="store_true",
                        help="print the conservation table (relevance in and out per layer) of every batch")
    edges = parser.add_argument_group("edges")
    edges.add_argument("--edges", metavar="FILE", type=_path_with_suffix(".graphml", ".json"),
                       help="write one sample's edge relevance as a graph: .graphml (Gephi, Cytoscape) or "
                            ".json (node-link) (default: not written)")
    _add_sample(edges, "whose edges --edges writes")
    edges.add_argument("--top-k", type=_int_at_least(0), metavar="K",
                       help="keep only the K edges of largest |relevance| (default: all)")
    edges.add_argument("--threshold", metavar="X", type=_nonnegative_float,
                       help="keep only edges with |relevance| >= X (default: all)")
    edges.add_argument("--mass", metavar="X", type=_fraction,
                       help="keep the fewest edges holding the fraction X of the total |relevance| (default: all)")


def _add_paths(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``paths`` subcommand and its own options."""
    parser = _subcommand(
        subparsers, "paths", run_paths, "the most relevant input-to-output paths of one sample",
        "Find the K most relevant paths from an input unit to an output unit for one sample, and print them "
        "as a table (or JSON).")
    _add_sample(parser, "to explain")
    parser.add_argument("--k", type=_int_at_least(1), default=5, metavar="K",
                        help="number of paths (default: %(default)s)")
    parser.add_argument("--score", choices=analysis.PATH_SCORES, default="product",
                        help="product: the relevance that flows along the path (ranked by absolute value); "
                             "sum: the sum of |relevance| of its edges (default: %(default)s)")
    parser.add_argument("--target-node", type=_int_at_least(0), metavar="I",
                        help="index of the output unit the paths end at (default: the one with the largest "
                             "|relevance|, i.e. the explained class)")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of paths (nodes, labels, score, edge_relevance), best first")


def _add_circuit(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``circuit`` subcommand and its own options."""
    parser = _subcommand(
        subparsers, "circuit", run_circuit, "the fewest edges carrying most of one sample's relevance",
        "Find the relevant circuit of one sample: the fewest edges carrying the fraction --fraction of its "
        "total |edge relevance|. Prints how many edges it keeps and its faithfulness: the explained output "
        "of the full network and of the circuit alone (not available for networks with max pooling).")
    _add_sample(parser, "to explain")
    parser.add_argument("--fraction", metavar="X", type=_fraction, default=0.9,
                        help="share of the total |edge relevance| the circuit carries (default: %(default)s)")
    parser.add_argument("--edges", metavar="FILE", type=_path_with_suffix(".graphml", ".json"),
                        help="write the circuit as a graph: .graphml or .json (default: not written)")
    parser.add_argument("--draw", metavar="FILE", type=_path_with_suffix(".png", ".svg"),
                        help="draw the circuit layer by layer: .png or .svg (default: not drawn; needs matplotlib)")


def _add_plot(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plot`` subcommand and its own options."""
    parser = _subcommand(
        subparsers, "plot", run_plot, "heatmaps of input relevance, for image inputs",
        "Draw the inputs and heatmaps of their relevance (red positive, blue negative; channels summed) for "
        "the first --samples samples. Needs image-shaped inputs, (N, H, W) or (N, C, H, W), and matplotlib.")
    parser.add_argument("--out", required=True, metavar="FILE", type=_path_with_suffix(".png", ".svg"),
                        help="where to write the picture: .png or .svg (required)")
    parser.add_argument("--samples", type=_int_at_least(1), default=8, metavar="N",
                        help="how many samples, from the first (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The ``graphlrp`` argument parser, one subcommand per task."""
    parser = argparse.ArgumentParser(
        prog="graphlrp", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Layer-wise Relevance Propagation on an explicit computation graph: explain a model's "
                    "outputs by the relevance of its inputs, edges, paths and circuits.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of a failure")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       title="commands (COMMAND --help for its options)")
    for add in (_add_explain, _add_paths, _add_circuit, _add_plot):
        add(subparsers)
    from .aggregation.cli import add_parser as add_aggregate

    add_aggregate(subparsers, sys.modules[__name__])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``graphlrp`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code: :data:`EXIT_OK`, :data:`EXIT_ERROR`, :data:`EXIT_USAGE`, :data:`EXIT_FILE` or
        :data:`EXIT_MODEL` (see the module docstring). Usage errors (exit code 2) and ``--help``
        exit through argparse's ``SystemExit`` instead.
    """
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CliError as error:
        return _report(args, error, str(error), error.code)
    except (GraphLRPError, OSError) as error:
        return _report(args, error, _summary(error, limit=1000), exit_code(error))
    except Exception as error:  # noqa: BLE001 - the last resort: report, exit 1
        hint = "" if args.debug else "; run with --debug for the traceback"
        return _report(args, error, f"unexpected error (a bug in graphlrp): {type(error).__name__}: "
                                    f"{_summary(error)}{hint}", EXIT_ERROR)
    return EXIT_OK


def _report(args: argparse.Namespace, error: BaseException, message: str, code: int) -> int:
    """Print ``message`` as one line on stderr (after the traceback with ``--debug``); return ``code``."""
    if args.debug:
        traceback.print_exception(error)
    print(f"graphlrp: error: {' '.join(message.split())}", file=sys.stderr)
    return code
