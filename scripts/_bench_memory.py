"""Peak memory of torch, Zennit and graphlrp on the dense MLP; run in a fresh process each
(see ``_bench_child.py``), since a peak is per process."""
from __future__ import annotations

from typing import Callable

import torch
from zennit.attribution import Gradient

import graphlrp
from graphlrp import kernels
from _bench_cases import EPSILON, MLP_CLASSES, MLP_RULES, MLP_WIDTH, mlp, torch_forward, torch_gradient
from _bench_util import PeakProbe, release_free_memory

#: what the MLP memory measurement can run: torch's forward and gradient, ``'<library> <rule>'``
MEMORY_SUBJECTS = ("forward", "gradient", "zennit ε", "graphlrp ε", "zennit z⁺", "graphlrp z⁺", "zennit αβ(2,1)",
                   "graphlrp αβ(2,1)", "zennit γ(0.25)", "graphlrp γ(0.25)")


def _warm_up_libraries() -> None:
    """Run every code path once on a small network, so that lazy initialisation of torch, MKL,
    Zennit and graphlrp (numba loading its compiled kernels) is not counted as memory of the
    measured call. The batch is large enough for the compiled quotient kernel to be used."""
    width = 256
    model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(), torch.nn.Linear(width, 2)).eval()
    x = torch.randn(max(1, kernels.COMPILED_QUOTIENT_FROM // width), width)
    torch_forward(model, x)
    torch_gradient(model.requires_grad_(False), x, torch.zeros(len(x), dtype=torch.long))
    with Gradient(model, EPSILON.zennit()) as attributor:
        attributor(x, lambda output: output)
    graphlrp.explain(graphlrp.lower(model, x), x, target=0, rule=graphlrp.rules.Epsilon())


def _prepare(subject: str, batch: int) -> Callable[[], object]:
    """Build the MLP (and for graphlrp its graph, dropping the module) and return the measured call."""
    torch.manual_seed(0)
    model = mlp().eval()
    x = torch.randn(batch, MLP_WIDTH)
    target = torch_forward(model, x).argmax(1)
    if subject == "forward":
        return lambda: torch_forward(model, x)
    if subject == "gradient":
        model.requires_grad_(False)
        return lambda: torch_gradient(model, x, target)
    library, rule = subject.split(" ", 1)
    spec = {spec.name: spec for spec in MLP_RULES}[rule]
    if library == "zennit":
        onehot = torch.nn.functional.one_hot(target, MLP_CLASSES).to(x.dtype)
        composite = spec.zennit()
        composite.register(model)  # once, as `with Gradient(...)` would
        attributor = Gradient(model, composite)
        return lambda: attributor(x, lambda output: output * onehot)
    graph = graphlrp.lower(model, x)
    del model  # explaining needs only the graph
    kwargs = spec.graphlrp()
    return lambda: graphlrp.explain(graph, x, target=target, **kwargs)


def mlp_memory(subject: str, batch: int) -> dict[str, float]:
    """Memory of two calls of ``subject`` on the dense MLP, in bytes.

    ``resident``: held after set-up (weights or graph), ``peak``: highest resident memory during
    the calls, both above the process's memory before the model was built; ``working``: peak above
    resident.
    """
    _warm_up_libraries()
    probe = PeakProbe()
    release_free_memory()
    baseline = probe.rss()
    call = _prepare(subject, batch)
    release_free_memory()
    resident = probe.rss()
    probe.reset()
    call()
    call()
    peak = probe.peak()
    return {"resident": resident - baseline, "peak": peak - baseline, "working": peak - resident}
