"""Tiny torch models described by a :class:`ModelSpec`, built in the forms users write them.

A spec fixes the function (widths, activation, bias, batch norm, residual additions, weights from a
seed); the *form* varies how it is written: an ``nn.Sequential`` or a module traced by ``torch.fx``,
in-place activations, one activation object reused for every layer, functional and method calls,
an in-place activation applied to the input itself, batch norm or dropout left in training mode.
:func:`build_model` with ``canonical=True`` builds the same function in the plainest form (distinct
out-of-place modules, eval mode): the reference the lowered graph is held to.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor

#: activation kinds: module maker (taking ``inplace``), functional form (taking ``inplace``), in-place method
_ACTIVATIONS = {
    "relu": (lambda ip: nn.ReLU(inplace=ip), lambda h, ip: F.relu(h, inplace=ip), "relu_"),
    "leaky_relu": (lambda ip: nn.LeakyReLU(0.1, inplace=ip), lambda h, ip: F.leaky_relu(h, 0.1, inplace=ip), None),
    "elu": (lambda ip: nn.ELU(inplace=ip), lambda h, ip: F.elu(h, inplace=ip), None),
    "hardtanh": (lambda ip: nn.Hardtanh(inplace=ip), lambda h, ip: F.hardtanh(h, inplace=ip), None),
    "silu": (lambda ip: nn.SiLU(inplace=ip), lambda h, ip: F.silu(h, inplace=ip), None),
    "selu": (lambda ip: nn.SELU(inplace=ip), lambda h, ip: F.selu(h, inplace=ip), None),
    "hardsigmoid": (lambda ip: nn.Hardsigmoid(inplace=ip), lambda h, ip: F.hardsigmoid(h, inplace=ip), None),
    "tanh": (lambda ip: nn.Tanh(), lambda h, ip: h.tanh_() if ip else torch.tanh(h), "tanh_"),
    "sigmoid": (lambda ip: nn.Sigmoid(), lambda h, ip: h.sigmoid_() if ip else torch.sigmoid(h), "sigmoid_"),
    "identity": (lambda ip: nn.Identity(), lambda h, ip: h, None),
}
ACTIVATION_KINDS = tuple(_ACTIVATIONS)
#: activation kinds under which LRP-0 equals gradient × input (on a network without biases)
HOMOGENEOUS_KINDS = ("relu", "leaky_relu", "identity")
#: how a traced model applies its activations
FORMS = ("module", "function", "statement")


@dataclass(frozen=True)
class ModelSpec:
    """A tiny network ``Linear → [norm] → activation → … → Linear`` and the form it is written in.

    ``form`` is ``'sequential'`` or ``'traced'``; ``calls`` how a traced model applies activations
    (``'module'``, ``'function'``, or ``'statement'``: an in-place method call whose result is not
    assigned); ``norm`` is ``'none'``, ``'batchnorm'`` or ``'dropout'``; ``training`` is ``'eval'``,
    ``'train'`` (the whole model) or ``'mixed'`` (only the norm or dropout modules).
    """

    widths: tuple[int, ...]
    activation: str = "relu"
    bias: bool = True
    dtype: str = "float64"
    seed: int = 0
    form: str = "sequential"
    inplace: bool = False
    reuse: bool = False
    calls: str = "module"
    residual: bool = False
    norm: str = "none"
    training: str = "eval"
    leading_inplace: bool = False
    tuple_output: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def homogeneous(self) -> bool:
        """LRP-0 equals gradient × input on the canonical model."""
        return self.activation in HOMOGENEOUS_KINDS and not self.bias and self.norm != "batchnorm"

    @property
    def varied(self) -> bool:
        """The written form differs from the canonical one."""
        return self != canonical_spec(self)


def canonical_spec(spec: ModelSpec) -> ModelSpec:
    """The same function in the plainest form."""
    return replace(spec, inplace=False, reuse=False, calls="module", training="eval", tuple_output=False,
                   norm="none" if spec.norm == "dropout" else spec.norm,
                   form="traced" if spec.residual else "sequential")


@st.composite
def model_specs(draw, traced: bool | None = None, varied: bool = True) -> ModelSpec:
    """Specs of 1–3 layers, 1–4 units wide; ``varied`` draws the non-canonical forms too."""
    form = draw(st.sampled_from(["sequential", "traced"])) if traced is None else ("traced" if traced else "sequential")
    depth = draw(st.integers(1, 3))
    residual = form == "traced" and varied and draw(st.booleans())
    if residual:
        width = draw(st.integers(1, 4))
        widths = (width,) * depth + (draw(st.integers(1, 3)),)
    else:
        widths = tuple(draw(st.integers(1, 4)) for _ in range(depth)) + (draw(st.integers(1, 3)),)
    spec = ModelSpec(
        widths=widths,
        activation=draw(st.sampled_from(ACTIVATION_KINDS)),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float64", "float32"])),
        seed=draw(st.integers(0, 2**16)),
        form=form,
        residual=residual,
    )
    if not varied:
        return spec
    return replace(
        spec,
        inplace=draw(st.booleans()),
        reuse=draw(st.booleans()),
        calls=draw(st.sampled_from(FORMS)) if form == "traced" else "module",
        norm=draw(st.sampled_from(["none", "none", "batchnorm", "dropout"])),
        training=draw(st.sampled_from(["eval", "eval", "train", "mixed"])),
        leading_inplace=draw(st.booleans()) and draw(st.booleans()),
        tuple_output=form == "traced" and draw(st.integers(0, 7)) == 0,
    )


class Traced(nn.Module):
    """A model ``torch.fx`` traces (not an ``nn.Sequential``): the form of :class:`ModelSpec` ``'traced'``."""

    def __init__(self, spec: ModelSpec, linears: list[nn.Linear], norms: list[nn.Module], acts: list[nn.Module],
                 lead: nn.Module | None) -> None:
        super().__init__()
        self.linears = nn.ModuleList(linears)
        self.norms = nn.ModuleList(norms)
        self.acts = nn.ModuleList(acts)
        self.lead = lead
        self.calls = spec.calls
        self.kind = spec.activation
        self.inplace = spec.inplace
        self.residual = [spec.residual and a == b for a, b in zip(spec.widths[:-2], spec.widths[1:-1])]
        self.tuple_output = spec.tuple_output

    def forward(self, x: Tensor):
        h = self.lead(x) if self.lead is not None else x
        for i, linear in enumerate(self.linears[:-1]):
            z = linear(h)
            if len(self.norms):
                z = self.norms[i](z)
            a = self._activate(z, i)
            h = h + a if self.residual[i] else a
        out = self.linears[-1](h)
        return (out, h) if self.tuple_output else out

    def _activate(self, z: Tensor, i: int) -> Tensor:
        _, function, method = _ACTIVATIONS[self.kind]
        if self.calls == "module":
            return self.acts[i if len(self.acts) > 1 else 0](z)
        if self.calls == "statement" and method is not None:
            getattr(z, method)()  # the in-place result is not assigned: z itself changed
            return z
        return function(z, self.inplace)


def _parameters(spec: ModelSpec) -> tuple[list[nn.Linear], list[nn.BatchNorm1d]]:
    generator = torch.Generator().manual_seed(spec.seed)
    dtype = spec.torch_dtype
    linears, norms = [], []
    for n_in, n_out in zip(spec.widths[:-1], spec.widths[1:]):
        linear = nn.Linear(n_in, n_out, bias=spec.bias).to(dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n_out, n_in, generator=generator, dtype=dtype))
            if spec.bias:
                linear.bias.copy_(0.5 * torch.randn(n_out, generator=generator, dtype=dtype))
        linears.append(linear)
    for width in spec.widths[1:-1]:
        norm = nn.BatchNorm1d(width).to(dtype)
        with torch.no_grad():
            norm.running_mean.copy_(0.3 * torch.randn(width, generator=generator, dtype=dtype))
            norm.running_var.copy_(0.5 + torch.rand(width, generator=generator, dtype=dtype))
            norm.weight.copy_(1 + 0.2 * torch.randn(width, generator=generator, dtype=dtype))
            norm.bias.copy_(0.2 * torch.randn(width, generator=generator, dtype=dtype))
        norms.append(norm)
    return linears, norms


def build_model(spec: ModelSpec, canonical: bool = False) -> nn.Module:
    """The model of ``spec`` (``canonical``: of :func:`canonical_spec`), with weights from its seed."""
    spec = canonical_spec(spec) if canonical else spec
    linears, batch_norms = _parameters(spec)
    hidden = len(spec.widths) - 2
    make = _ACTIVATIONS[spec.activation][0]
    shared = make(spec.inplace)
    acts = [shared if spec.reuse else make(spec.inplace) for _ in range(hidden)]
    if spec.norm == "batchnorm":
        norms: list[nn.Module] = batch_norms
    elif spec.norm == "dropout":
        norms = [nn.Dropout(0.5) for _ in range(hidden)]
    else:
        norms = []
    lead = make(spec.inplace) if spec.leading_inplace else None
    if spec.form == "traced":
        model: nn.Module = Traced(spec, linears, norms, acts, lead)
    else:
        layers: list[nn.Module] = [lead] if lead is not None else []
        for i, linear in enumerate(linears[:-1]):
            layers += [linear] + ([norms[i]] if norms else []) + [acts[i]]
        model = nn.Sequential(*layers, linears[-1])
    model.eval()
    if spec.training == "train":
        model.train()
    elif spec.training == "mixed":
        for module in norms:
            module.train()
    return model


def as_is(model: nn.Module):
    """``x ↦`` what a copy of ``model``, in its own modes, computes on a copy of ``x`` (first output of a tuple)."""
    twin = copy.deepcopy(model)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            out = twin(x.clone())
        return out[0] if isinstance(out, tuple) else out

    return run


#: the kinds of example input :func:`example_input` makes; only ``'ok'`` is a valid input
INPUT_KINDS = ("ok", "ok", "ok", "wrong_width", "vector", "empty", "nan", "inf", "int", "float16", "other_float",
               "requires_grad", "noncontiguous", "none", "list", "huge")


def example_input(spec: ModelSpec, kind: str, batch: int, seed: int):
    """An example input of ``kind`` for ``spec``'s model (a valid batch for ``'ok'``, ``'requires_grad'``
    and ``'noncontiguous'``)."""
    dtype = spec.torch_dtype
    width = spec.widths[0]
    x = torch.randn(batch, width, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if kind == "wrong_width":
        return torch.randn(batch, width + 1, dtype=dtype)
    if kind == "vector":
        return x[0].clone()
    if kind == "empty":
        return x[:0].clone()
    if kind == "nan":
        x[0, 0] = float("nan")
    elif kind == "inf":
        x[-1, -1] = float("inf")
    elif kind == "int":
        return (x * 3).to(torch.int64)
    elif kind == "float16":
        return x.to(torch.float16)
    elif kind == "other_float":
        return x.to(torch.float32 if dtype == torch.float64 else torch.float64)
    elif kind == "requires_grad":
        return x.requires_grad_(True)
    elif kind == "noncontiguous":
        return torch.randn(width, batch, dtype=dtype).T
    elif kind == "none":
        return None
    elif kind == "list":
        return x.tolist()
    elif kind == "huge":
        return x * 1e300 if dtype == torch.float64 else x * 1e36
    return x
