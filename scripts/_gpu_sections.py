"""The sections of ``scripts/gpu-check``: each takes the device to check and returns its results.

A section raises :class:`Skipped` to be reported as skipped; a result holding ``"ok": False``
counts as a failure. Every comparison is against the same computation on the CPU.
"""
from __future__ import annotations

import contextlib
from importlib import metadata
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

import graphlrp
from graphlrp import calibration, reductions, rules
from graphlrp.devices import held_tensors

#: relative error allowed against the CPU: float64 rounding, float32 (IEEE, TF32 off) rounding
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


class Skipped(Exception):
    """A section that cannot run here; the message says why."""


@dataclass(frozen=True)
class Options:
    device: torch.device
    quick: bool
    save_calibration: bool


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |ours − reference| / max |reference|`` on the CPU in float64 (0 when both are zero)."""
    ours, reference = ours.detach().cpu().double(), reference.detach().cpu().double()
    scale, difference = float(reference.abs().max()), float((ours - reference).abs().max())
    return (0.0 if difference == 0 else float("inf")) if scale == 0 else difference / scale


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 products and convolutions without TF32 on CUDA (restored after)."""
    matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = matmul, conv


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- models ------------------------------------------------------------------------------------
def pruned_mlp(dtype: torch.dtype) -> nn.Sequential:
    """20 → 30 → 30 → 5 with a third of the first layer's weights kept (a CSR-sized density)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        model[0].weight.mul_(torch.rand(30, 20) < 0.3)
    return model.to(dtype).eval()


class SmallCNN(nn.Module):
    """Convolution, batch norm, max pooling, a residual sum, average pooling and a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.pool = nn.Conv2d(6, 6, 3, padding=1), nn.MaxPool2d(2)
        self.avg, self.head = nn.AdaptiveAvgPool2d(3), nn.Linear(6 * 9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = self.pool(h + torch.relu(self.conv2(h)))
        return self.head(self.avg(h).flatten(1))


def small_cnn(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(1)
    model = SmallCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.to(dtype).eval()


MLP_RULES: dict[str, Callable[[], dict]] = {
    "epsilon": lambda: {"rule": rules.Epsilon(1e-6)},
    "zplus": lambda: {"rule": rules.ZPlus()},
    "alpha2beta1": lambda: {"rule": rules.AlphaBeta(2.0, 1.0)},
    "gamma": lambda: {"rule": rules.Gamma(0.25)},
    "wsquare": lambda: {"rule": rules.WSquare()},
    "flat": lambda: {"rule": rules.Flat()},
    "zbox": lambda: {"rule": rules.ZBox(0.0, 1.0)},
}
CNN_RULES: dict[str, Callable[[], dict]] = {
    **MLP_RULES,
    "epsilon-plus-flat": lambda: {"composite": graphlrp.composites.EpsilonPlusFlat()},
    "epsilon-gamma-box": lambda: {"composite": graphlrp.composites.EpsilonGammaBox(low=0.0, high=1.0)},
}


#: the rules of a quick run: one per kind of weight transform (none, sign split, γ) and a box rule
QUICK_RULES = ("epsilon", "gamma", "alpha2beta1", "epsilon-gamma-box")


def _variants(dtype: torch.dtype, quick: bool) -> list[tuple[str, nn.Module, torch.Tensor, dict, dict]]:
    """(name, model, input, lowering options, rules): every block kind and both max-pool modes."""
    x_mlp, x_cnn = torch.rand(4, 20, dtype=dtype), torch.rand(3, 3, 8, 8, dtype=dtype)
    mlp_rules, cnn_rules = (
        ({k: v for k, v in chosen.items() if k in QUICK_RULES} for chosen in (MLP_RULES, CNN_RULES))
        if quick else (MLP_RULES, CNN_RULES))
    variants = [(f"mlp-{kind}", pruned_mlp(dtype), x_mlp, {"block_kind": kind}, mlp_rules)
                for kind in ("dense", "sparse", "edges")]
    variants += [(f"cnn-{mode}", small_cnn(dtype), x_cnn, {"max_pool": mode}, cnn_rules)
                 for mode in ("winner", "proportional")]
    return variants


def _explain_both(graph: graphlrp.Graph, x: torch.Tensor, device: torch.device, method: dict
                  ) -> tuple[graphlrp.Explanation, graphlrp.Explanation]:
    moved = graph.to(device)
    return (graphlrp.explain(graph, x, target=0, **method),
            graphlrp.explain(moved, x.to(device), target=0, **method))


# -- sections ------------------------------------------------------------------------------------
def environment(options: Options) -> dict:
    """Versions and devices."""
    info = {
        "python": platform.python_version(), "platform": platform.platform(), "graphlrp": graphlrp.__version__,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads(),
        "reduction_backends": list(reductions.available_backends()),
        "torch_scatter_cuda_kernels": reductions.has_cuda_kernels(),
        "sparse_density_threshold": graphlrp.thresholds.sparse_density(options.device),
    }
    if torch.cuda.is_available():
        info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                         "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 1e9, 1),
                         "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                        for i in range(torch.cuda.device_count())]
    for package in ("torch_scatter", "numba", "zennit", "torchvision"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def agreement(options: Options) -> dict:
    """Every rule × block kind on the device against the CPU: input and edge relevance, float64 and
    float32 (TF32 off)."""
    rows, worst = [], {str(dtype): 0.0 for dtype in TOLERANCE}
    with ieee_float32():
        for dtype in TOLERANCE:
            for name, model, x, lowering, rule_set in _variants(dtype, options.quick):
                graph = graphlrp.lower(model, x, **lowering)
                for rule, method in rule_set.items():
                    cpu, device = _explain_both(graph, x, options.device, method())
                    error = max(relative_error(device.input_relevance, cpu.input_relevance),
                                relative_error(device.edge_relevance(0), cpu.edge_relevance(0)))
                    worst[str(dtype)] = max(worst[str(dtype)], error)
                    rows.append({"model": name, "rule": rule, "dtype": str(dtype), "error": error,
                                 "ok": error <= TOLERANCE[dtype]})
    return {"ok": all(r["ok"] for r in rows), "worst": worst, "cases": len(rows),
            "failures": [r for r in rows if not r["ok"]], "tolerance": {str(k): v for k, v in TOLERANCE.items()}}


def lowering(options: Options) -> dict:
    """Lowering a model that is on the device, against lowering it on the CPU."""
    rows = []
    for name, build, x in (("mlp", pruned_mlp, torch.rand(4, 20, dtype=torch.float64)),
                           ("cnn", small_cnn, torch.rand(3, 3, 8, 8, dtype=torch.float64))):
        model = build(torch.float64)
        on_cpu = graphlrp.lower(model, x)
        on_device = graphlrp.lower(build(torch.float64).to(options.device), x.to(options.device))
        devices = {t.device for t in held_tensors(on_device)}
        cpu = graphlrp.explain(on_cpu, x, target=1, rule=rules.Epsilon())
        ours = graphlrp.explain(on_device, x.to(options.device), target=1, rule=rules.Epsilon())
        error = relative_error(ours.input_relevance, cpu.input_relevance)
        rows.append({"model": name, "devices": sorted(map(str, devices)), "error": error,
                     "kinds": [b.kind for b in on_device.blocks],
                     "ok": devices == {on_device.device} and error <= TOLERANCE[torch.float64]})
    return {"ok": all(r["ok"] for r in rows), "models": rows}


def graph_to(options: Options) -> dict:
    """Every tensor a graph holds follows it: after ``.to(device)``, after explaining there (caches),
    and after ``.to(dtype=...)`` on the device."""
    x = torch.rand(3, 3, 8, 8)
    rows = []
    for mode in ("winner", "proportional"):
        graph = graphlrp.lower(small_cnn(torch.float32), x, max_pool=mode, block_kind="sparse").to(options.device)
        stages = {"moved": graph}
        graphlrp.explain(graph, x.to(options.device), target=0,
                         composite=graphlrp.composites.EpsilonGammaBox(low=0.0, high=1.0)).edge_relevance(0)
        stages["explained"] = graph
        widened = graph.to(dtype=torch.float64)
        graphlrp.explain(widened, x.double().to(options.device), target=0).edge_relevance(0)
        stages["widened and explained"] = widened
        for stage, g in stages.items():
            devices = {str(t.device) for t in held_tensors(g)}
            rows.append({"max_pool": mode, "stage": stage, "tensors": len(held_tensors(g)),
                         "devices": sorted(devices), "ok": devices == {str(g.device)}})
    return {"ok": all(r["ok"] for r in rows), "checks": rows}


def reduction_backends(options: Options) -> dict:
    """Both reduction backends against the CPU; a torch_scatter without kernels for the device refused."""
    result: dict = {"backends": {}}
    x = torch.rand(16, 20, dtype=torch.float64)
    graph = graphlrp.lower(pruned_mlp(torch.float64), x, block_kind="edges")
    reference = graphlrp.explain(graph, x, target=2, rule=rules.Gamma(0.25))
    for name in reductions.available_backends():
        with reductions.backend(name):
            try:
                ours = graphlrp.explain(graph.to(options.device), x.to(options.device), target=2, rule=rules.Gamma(0.25))
            except graphlrp.DeviceError as error:
                result["backends"][name] = {"refused": str(error), "ok": not reductions.has_cuda_kernels()}
                continue
            paths = graphlrp.analysis.top_paths(ours, 0, k=3)
            expected = graphlrp.analysis.top_paths(reference, 0, k=3)
            error = relative_error(ours.node_relevance, reference.node_relevance)
            same_paths = [p.nodes for p in paths] == [p.nodes for p in expected]
            result["backends"][name] = {"error": error, "top_paths_agree": same_paths,
                                        "ok": error <= TOLERANCE[torch.float64] and same_paths}
    result["scatter_max_ties"] = _scatter_max_ties(options.device)
    result["csr_beta0_ignores_out"] = _csr_beta0(options.device)
    result["ok"] = (all(b["ok"] for b in result["backends"].values()) and result["scatter_max_ties"]["ok"]
                    and result["csr_beta0_ignores_out"])
    return result


def _scatter_max_ties(device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (2000,), generator=generator).double()
    index = torch.randint(0, 320, (2000,), generator=generator)
    best_cpu, _ = reductions.scatter_max(values, index, 330)
    best, arg = reductions.scatter_max(values.to(device), index.to(device), 330)
    best, arg = best.cpu(), arg.cpu()
    member = arg >= 0
    points_at_max = bool((values[arg[member]] == best[member]).all() and (index[arg[member]] == member.nonzero()[:, 0]).all())
    return {"maxima_equal": bool(torch.equal(best, best_cpu)), "arg_points_at_a_maximum": points_at_max,
            "ok": bool(torch.equal(best, best_cpu)) and points_at_max}


def _csr_beta0(device: torch.device) -> bool:
    """``addmm(out, csr, dense, beta=0, out=out)`` into NaN memory gives no NaN (graphlrp relies on it)."""
    dense = torch.randn(50, 40, dtype=torch.float64) * (torch.rand(50, 40) < 0.1)
    csr = dense.to(device).to_sparse_csr()
    operand = torch.randn(40, 7, dtype=torch.float64, device=device)
    out = torch.full((50, 7), float("nan"), dtype=torch.float64, device=device)
    torch.addmm(out, csr, operand, beta=0, out=out)
    return relative_error(out, dense @ operand.cpu()) <= TOLERANCE[torch.float64]


def scatter_refusal(options: Options) -> dict:
    """A torch_scatter built without CUDA kernels is refused for CUDA tensors (runs without a GPU)."""
    if "torch_scatter" not in reductions.available_backends():
        raise Skipped("torch_scatter is not installed")
    if reductions.has_cuda_kernels():
        raise Skipped("the installed torch_scatter has CUDA kernels")
    with reductions.backend("torch_scatter"):
        try:
            reductions.backend_for("cuda")
        except graphlrp.DeviceError as error:
            return {"ok": True, "message": str(error)}
    return {"ok": False, "message": "not refused"}


def crossover(options: Options) -> dict:
    """The dense/CSR crossover on the device (:func:`graphlrp.calibration.calibrate`)."""
    quick = {"size": 256, "batches": (1, 16), "densities": (0.01, 0.05, 0.2, 0.5), "repeats": 2}
    full = {"size": 2048, "batches": (1, 16, 64, 256), "repeats": 5}
    result = calibration.calibrate(options.device, save=options.save_calibration, **(quick if options.quick else full))
    return {"ok": True, "sparse_density": result.sparse_density, "crossovers": result.crossovers,
            "device_name": result.device_name, "saved": options.save_calibration,
            "default": graphlrp.thresholds.DEFAULT_THRESHOLDS.get(options.device.type)}


def host_syncs(options: Options) -> dict:
    """Host synchronisations in a warm ``explain`` (``torch.cuda.set_sync_debug_mode``)."""
    if options.device.type != "cuda":
        raise Skipped("counted by CUDA's sync debug mode only")
    x = torch.rand(8, 20, dtype=torch.float64, device=options.device)
    rows = {}
    for kind in ("dense", "sparse", "edges"):
        graph = graphlrp.lower(pruned_mlp(torch.float64), x.cpu(), block_kind=kind).to(options.device)
        for rule, method in (("epsilon", {"rule": rules.Epsilon()}), ("zplus", {"rule": rules.ZPlus()})):
            graphlrp.explain(graph, x, target=0, **method)
            rows[f"{kind}/{rule}"] = count_syncs(lambda: graphlrp.explain(graph, x, target=0, **method))
    return {"ok": True, "per_warm_explain": rows}


def count_syncs(fn: Callable[[], object]) -> int:
    """The synchronising CUDA operations ``fn`` makes."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median seconds of ``repeats`` calls after one warm-up call, synchronised."""
    fn()
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]
