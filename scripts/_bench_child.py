"""Measurements that ``scripts/bench`` runs each in a fresh process (peak memory is per process).

Run as ``python scripts/_bench_child.py '<json task>'``; prints one JSON object. For memory the
parent sets ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors go back to the OS and RSS follows
live memory; for times it does not (with it every large allocation is fresh pages).
Each task imports only what it needs (Zennit pulls in torchvision, seconds per process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from _bench_util import CHILD_MALLOC_ENV, Timing


def run_child(task: dict, threads: int, for_memory: bool = True) -> dict:
    """Run ``task`` in a fresh interpreter and return its JSON answer.

    ``for_memory`` sets :data:`CHILD_MALLOC_ENV`, so that resident memory follows live memory; it
    also makes every large allocation fresh pages, so times are taken in a child without it.
    """
    env = {**os.environ, **CHILD_MALLOC_ENV} if for_memory else dict(os.environ)
    command = [sys.executable, os.path.abspath(__file__), json.dumps({**task, "threads": threads})]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement {task} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_children(tasks: Sequence[dict], threads: int, parallel: int) -> list[dict]:
    """Run ``tasks`` in fresh interpreters, ``parallel`` at a time (only for untimed measurements)."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda task: run_child(task, threads), tasks))


def _main(task: dict) -> dict:
    import torch

    torch.set_num_threads(task["threads"])
    if task["task"] == "mlp_memory":
        from _bench_memory import mlp_memory

        return mlp_memory(task["subject"], task["batch"])
    if task["task"] == "dag":
        from _bench_dag import measure_dag

        return measure_dag(task["edges"], task["kind"], Timing(task["warmup"], task["repeats"]))
    raise ValueError(f"unknown task {task['task']!r}")


if __name__ == "__main__":
    print(json.dumps(_main(json.loads(sys.argv[1]))))
