"""The timing section of ``scripts/gpu-check``: graphlrp against Zennit on the same device.

Per case: lowering (on the CPU, then ``.to(device)``), the median seconds of ``explain`` and of
Zennit's ``Gradient`` with the same rules, of one sample's edge relevance, and the peak device
memory of each (CUDA only). Zennit's agreement is reported, not judged: on pruned models it reads
the stale pruned weights, and on residual networks its treatment of sums differs
(``docs/differences.md``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
import zennit.composites
import zennit.rules
import zennit.types
from torch import nn
from zennit.attribution import Gradient

import graphlrp
from _bench_cases import baked_copy, lenet5, prune_linear_layers
from _gpu_sections import Options, relative_error, synchronize, timed


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    method: Callable[[], dict]
    zennit: Callable[[], zennit.core.Composite]
    prune: float | None = None


def mlp(width: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(width, 10))

    return build


def _epsilon() -> zennit.core.Composite:
    return zennit.composites.LayerMapComposite([(zennit.types.Activation, zennit.rules.Pass()),
                                                (nn.Linear, zennit.rules.Epsilon())])


def _resnet18() -> nn.Module:
    import torchvision
    return torchvision.models.resnet18()


def _resnet_composite() -> zennit.core.Composite:
    from zennit.torchvision import ResNetCanonizer
    return zennit.composites.EpsilonPlusFlat(canonizers=[ResNetCanonizer()])


def _epsilon_rule() -> dict:
    return {"rule": graphlrp.rules.Epsilon()}


def _epsilon_plus_flat() -> dict:
    return {"composite": graphlrp.composites.EpsilonPlusFlat()}


def cases(quick: bool) -> list[tuple[Case, int]]:
    """(case, batch) pairs: the MLP dense and pruned 90 % and 99 %, LeNet-5 and resnet18 at
    224 × 224, at batch 1 and 64 (``quick``: a 256-wide MLP, LeNet-5, batch 1 and 8)."""
    width = 256 if quick else 1024
    chosen = [Case(f"MLP {width}, dense", mlp(width), (width,), _epsilon_rule, _epsilon),
              Case(f"MLP {width}, pruned 90%", mlp(width), (width,), _epsilon_rule, _epsilon, 0.9)]
    if not quick:
        chosen += [Case(f"MLP {width}, pruned 99%", mlp(width), (width,), _epsilon_rule, _epsilon, 0.99)]
    chosen += [Case("LeNet-5", lenet5, (1, 28, 28), _epsilon_plus_flat, zennit.composites.EpsilonPlusFlat)]
    if not quick:
        chosen += [Case("resnet18 224x224", _resnet18, (3, 224, 224), _epsilon_plus_flat, _resnet_composite)]
    return [(case, batch) for case in chosen for batch in ((1, 8) if quick else (1, 64))]


def _peak(device: torch.device, fn: Callable[[], object]) -> float | None:
    """Peak device memory (MB) while ``fn`` runs, CUDA only."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 1e6


def run_case(case: Case, batch: int, options: Options) -> dict:
    device, repeats = options.device, 2 if options.quick else 7
    torch.manual_seed(0)
    model = case.build().eval()
    if case.prune is not None:
        prune_linear_layers(model, case.prune)
    x = torch.randn(batch, *case.input_shape)
    with torch.no_grad():
        model(x)  # a pruned layer's weight recomputed without autograd, so that it can be copied
    start = time.perf_counter()
    graph = graphlrp.lower(baked_copy(model), x)
    row: dict = {"case": case.name, "batch": batch, "lower_s": time.perf_counter() - start,
                 "kinds": sorted({b.kind for b in graph.blocks}), "edges": graph.num_edges}
    start = time.perf_counter()
    graph = graph.to(device)
    synchronize(device)
    row["to_device_s"] = time.perf_counter() - start
    model, x = model.to(device), x.to(device)
    target = graph(x).reshape(batch, -1).argmax(1)
    onehot = F.one_hot(target, graph.output_shape[0]).to(x.dtype)
    method = case.method()

    def ours() -> graphlrp.Explanation:
        return graphlrp.explain(graph, x, target=target, **method)

    row["graphlrp_s"] = timed(ours, device, repeats)
    row["graphlrp_peak_mb"] = _peak(device, ours)
    explanation = ours()
    try:
        row["edge_relevance_s"] = timed(lambda: explanation.edge_relevance(0), device, repeats)
        row["edge_relevance_peak_mb"] = _peak(device, lambda: explanation.edge_relevance(0))
    except graphlrp.GraphTooLargeError as error:
        row["edge_relevance_s"], row["edge_relevance_refused"] = None, str(error)
    with Gradient(model, case.zennit()) as attributor:
        def theirs() -> torch.Tensor:
            return attributor(x, lambda output: output * onehot)[1]

        row["zennit_s"] = timed(theirs, device, repeats)
        row["zennit_peak_mb"] = _peak(device, theirs)
        row["zennit_agreement"] = relative_error(explanation.input_relevance, theirs())
    row["ratio"] = row["graphlrp_s"] / row["zennit_s"]
    del graph, explanation
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def timings(options: Options) -> dict:
    """Every case of :func:`cases` on the device."""
    rows = [run_case(case, batch, options) for case, batch in cases(options.quick)]
    return {"ok": True, "cases": rows}
