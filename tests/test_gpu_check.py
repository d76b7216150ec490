"""``scripts/gpu-check`` runs on a machine without a GPU: it skips the device sections saying why,
checks what needs no GPU, and writes its JSON; with ``--device cpu`` every section runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphlrp import reductions

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-check"
DEVICE_SECTIONS = ("agreement", "lowering", "graph_to", "reductions", "crossover", "host_syncs", "timings")


def run_check(tmp_path: Path, *arguments: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out" / "check.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1]), "GRAPHLRP_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), *arguments], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=tmp_path)
    return done, json.loads(out.read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="the path of a machine without a GPU")
def test_without_a_gpu_the_device_sections_are_skipped_and_the_json_written(tmp_path):
    done, report = run_check(tmp_path, "--quick")
    assert done.returncode == 0, done.stderr
    assert report["ok"] and report["device"] is None
    sections = report["sections"]
    assert sections["environment"]["status"] == "ok"
    assert sections["environment"]["torch"] == torch.__version__
    assert sections["environment"]["cuda_available"] is False
    for name in DEVICE_SECTIONS:
        assert sections[name]["status"] == "skipped"
        assert "no CUDA GPU" in sections[name]["detail"]
    assert "no CUDA GPU" in done.stderr and "--device cpu runs them on the CPU" in done.stderr
    refusal = sections["scatter_refusal"]
    if "torch_scatter" in reductions.available_backends() and not reductions.has_cuda_kernels():
        assert refusal["status"] == "ok" and "built without CUDA kernels" in refusal["message"]
    else:
        assert refusal["status"] == "skipped"


@pytest.mark.slow
def test_an_unavailable_device_is_named_and_its_sections_skipped(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    done, report = run_check(tmp_path, "--device", "cuda:0", "--only", "environment", "lowering")
    assert done.returncode == 0
    assert set(report["sections"]) == {"environment", "lowering"}
    assert "device 'cuda:0' is not available" in report["sections"]["lowering"]["detail"]


@pytest.mark.slow
def test_with_the_cpu_standing_in_every_section_runs_and_agrees_exactly(tmp_path):
    done, report = run_check(tmp_path, "--quick", "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    sections = report["sections"]
    assert all(sections[name]["status"] == "ok" for name in DEVICE_SECTIONS if name != "host_syncs")
    assert sections["host_syncs"]["status"] == "skipped"
    # the CPU against itself: the same kernels on the same graph, bit for bit
    assert sections["agreement"]["cases"] > 30 and set(sections["agreement"]["worst"].values()) == {0.0}
    assert {row["stage"] for row in sections["graph_to"]["checks"]} == {"moved", "explained", "widened and explained"}
    assert len(sections["timings"]["cases"]) == 6 and "| LeNet-5 | 8 |" in done.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.slow
def test_on_a_gpu_every_section_passes(tmp_path):
    done, report = run_check(tmp_path, "--quick")
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(section["status"] == "ok" for section in report["sections"].values()
               if section["status"] != "skipped" or section.get("reason") != "torch_scatter is not installed")
