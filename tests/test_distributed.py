"""``graphlrp.aggregate`` shared between gloo processes on this machine: the same bits as one process.

Every test starts its processes itself (a rendezvous on a free local port, or ``torchrun``), each
bounded by a timeout, and compares what every process returns with one process's aggregate,
made here with ``torch.equal``: bit for bit, not within a tolerance. The processes run one torch
thread each, this process as many as it has.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import graphlrp
from graphlrp import rules
from graphlrp.errors import InputError

ROOT = Path(__file__).parent.parent
#: seconds a group of processes may take before the test fails (they start in 2–5 s each)
TIMEOUT = 240

#: the model, the data and the runs every process does, and this test again in its own process
SETUP = textwrap.dedent("""
    import os, signal, torch, torch.nn as nn
    import graphlrp
    from graphlrp import rules

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    model = model.double().eval()
    x = torch.randn(23, 1, 8, 8, dtype=torch.float64)
    labels = torch.arange(23) % 4
    graph = graphlrp.lower(model, x[:2])


    class Samples(torch.utils.data.Dataset):
        \"\"\"A map-style data set of (x, y) samples; KILL_AT: the sample whose reading kills this process.\"\"\"

        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            if i == int(os.environ.get("KILL_AT", -1)) and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
                os.kill(os.getpid(), signal.SIGKILL)
            with open(os.environ["READ_LOG"], "a") as log:
                log.write(f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '-')} {i}\\n")
            return x[i], labels[i]


    def stream():
        for start in range(0, len(x), 5):
            yield x[start : start + 5], labels[start : start + 5]


    def runs(**kwargs):
        common = dict(chunk_size=5, batch_size=3, progress=False, **kwargs)
        return {
            "tensor": graphlrp.aggregate(graph, x, labels, rule=rules.ZPlus(), **common),
            "stream": graphlrp.aggregate(graph, stream(), "label", rule=rules.Epsilon(0.01), by_class=True, **common),
            "absolute": graphlrp.aggregate(graph, x, "predicted", rule=rules.AlphaBeta(2.0, 1.0), absolute=True,
                                           **common),
            # a chunk per sample: runs of 16, 4 and 8 chunks for 1, 2 and 3 processes (16 for the stream)
            "runs": graphlrp.aggregate(graph, x, labels, rule=rules.Epsilon(1e-6), chunk_size=1, batch_size=1,
                                       progress=False, **kwargs),
            "stream runs": graphlrp.aggregate(graph, stream(), "label", rule=rules.Epsilon(1e-6), chunk_size=1,
                                              batch_size=1, progress=False, **kwargs),
        }


    def sums(found):
        return {name: {"count": a.count, "nodes": a.node_relevance, "edges": a.edge_relevance(),
                       "parameters": a.parameter_relevance()} for name, a in found.items()}
""")

#: a process of a group met on a local port: its runs, written to OUT/<rank>.pt
WORKER = SETUP + textwrap.dedent("""
    import datetime, torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))  # the user's own group
    torch.save(sums(runs()), os.path.join(os.environ["OUT"], f"{dist.get_rank()}.pt"))
    dist.destroy_process_group()
""")

#: a process started by torchrun: the map-style data set with a checkpoint (killed once if KILL_AT is set)
RESUMING = SETUP + textwrap.dedent("""
    torch.set_num_threads(1)
    found = graphlrp.aggregate(graph, Samples(), "label", rule=rules.ZPlus(), chunk_size=2, batch_size=3,
                               checkpoint=os.environ["CHECKPOINT"], checkpoint_every=1, progress=False,
                               distributed=True)
    torch.save(sums({"dataset": found}), os.path.join(os.environ["OUT"], f"{os.environ['RANK']}.pt"))
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**values: object) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.update({name: str(value) for name, value in values.items()})
    return env


def run_group(size: int, out: Path) -> list[dict]:
    """Start ``size`` processes of one gloo group; what each returned, in rank order."""
    port, script = free_port(), out / "worker.py"
    script.write_text(WORKER)
    group = [subprocess.Popen([sys.executable, str(script)], cwd=out,
                              env=environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=rank, WORLD_SIZE=size,
                                              OUT=out), start_new_session=True)
             for rank in range(size)]
    try:
        codes = [process.wait(timeout=TIMEOUT) for process in group]
    finally:
        for process in group:
            if process.poll() is None:
                process.kill()
    assert codes == [0] * size
    return [torch.load(out / f"{rank}.pt") for rank in range(size)]


def torchrun(size: int, arguments: list[str], out: Path, **env: object) -> tuple[int, str]:
    """Run ``torchrun`` with ``size`` local processes; its exit code and the end of its output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={size}",
               "--monitor-interval=0.1", *arguments]
    with open(out / "torchrun.log", "w") as log:
        job = subprocess.Popen(command, cwd=out, env=environment(**env), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        try:
            code = job.wait(timeout=TIMEOUT)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait()
    return code, (out / "torchrun.log").read_text()[-3000:]


def here() -> dict:
    """The setup run in this process (one process, no group)."""
    namespace: dict = {}
    exec(SETUP, namespace)
    return namespace


def assert_identical(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for name in expected:
        assert found[name]["count"] == expected[name]["count"]
        for key in ("nodes", "edges"):
            assert torch.equal(found[name][key], expected[name][key]), f"{name}: {key} differ"
        for parameter, values in expected[name]["parameters"].items():
            assert torch.equal(found[name]["parameters"][parameter], values), f"{name}: {parameter} differs"


@pytest.fixture(scope="module")
def one_process() -> dict:
    setup = here()
    return setup["sums"](setup["runs"]())


def test_one_process_sums_chunks_equal_to_the_per_sample_explanations(one_process):
    setup = here()
    explanation = graphlrp.explain(setup["graph"], setup["x"], target=setup["labels"], rule=rules.ZPlus())
    edges = explanation.edge_relevance().sum(0)
    found = one_process["tensor"]
    assert found["count"] == 23
    error = float((found["edges"] - edges).abs().max() / edges.abs().max())
    assert error < 1e-14


@pytest.mark.parametrize("size", [2, 3])
def test_every_process_of_a_group_returns_the_bits_of_one_process(size, tmp_path, one_process):
    # 23 samples in chunks of 5 (batches of 3 and 2): 5 chunks, the last one short; 2 and 3 processes share
    # them unevenly
    for found in run_group(size, tmp_path):
        assert_identical(found, one_process)


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 4])
def test_a_group_of_one_and_one_of_four_return_the_bits_of_one_process(size, tmp_path, one_process):
    # four processes: 5 chunks in runs of 2, so one process has a short run and one has none
    for found in run_group(size, tmp_path):
        assert_identical(found, one_process)


def test_a_killed_worker_is_restarted_by_torchrun_and_resumes_from_the_ledger(tmp_path, monkeypatch):
    setup = here()
    # sample 14 opens chunk 7, rank 1's fourth: by then rank 0 has saved the chunks of round 1
    (tmp_path / "resuming.py").write_text(RESUMING)
    log = tmp_path / "read.log"
    code, output = torchrun(2, ["--max-restarts=1", "resuming.py"], tmp_path, OUT=tmp_path, KILL_AT=14,
                            READ_LOG=log, CHECKPOINT=tmp_path / "run.pt")
    assert code == 0, output
    reads = [line.split() for line in log.read_text().splitlines()]
    first = {int(i) for attempt, i in reads if attempt == "0"}
    again = {int(i) for attempt, i in reads if attempt == "1"}
    assert 14 not in first and first and again
    assert min(again) >= 4, "the restarted job read samples its checkpoint already held"
    assert first | again == set(range(23))
    monkeypatch.setenv("READ_LOG", str(tmp_path / "here.log"))
    uninterrupted = graphlrp.aggregate(setup["graph"], setup["Samples"](), "label", rule=rules.ZPlus(),
                                       chunk_size=2, batch_size=3, progress=False)
    for rank in (0, 1):
        assert_identical(torch.load(tmp_path / f"{rank}.pt"), setup["sums"]({"dataset": uninterrupted}))


def test_the_aggregate_command_under_torchrun_writes_the_bits_of_one_process(tmp_path):
    (tmp_path / "factory.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double().eval()
    """))
    torch.manual_seed(1)
    torch.save(torch.randn(29, 6, dtype=torch.float64), tmp_path / "x.pt")
    common = ["aggregate", "factory.py:make", "x.pt", "--rule", "epsilon", "--batch-size", "4", "--chunk-size", "5",
              "-q"]
    alone = subprocess.run([sys.executable, "-m", "graphlrp", *common, "--out", "alone.pt"], cwd=tmp_path,
                           env=environment(), timeout=TIMEOUT, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    code, output = torchrun(2, ["-m", "graphlrp", *common, "--out", "shared.pt"], tmp_path)
    assert code == 0, output
    expected, found = torch.load(tmp_path / "alone.pt"), torch.load(tmp_path / "shared.pt")
    assert found["count"] == expected["count"] == 29
    for key in ("nodes", "edges"):
        assert torch.equal(found[key], expected[key])
    for name, values in expected["parameters"].items():
        assert torch.equal(found["parameters"][name], values)


def test_distributed_true_without_a_group_or_its_environment_is_refused(monkeypatch):
    setup = here()
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match="distributed=True needs a process group"):
        graphlrp.aggregate(setup["graph"], setup["x"], 0, distributed=True, progress=False)
    with pytest.raises(TypeError, match="distributed must be"):
        graphlrp.aggregate(setup["graph"], setup["x"], 0, distributed="yes", progress=False)


# -- chunks on one process -------------------------------------------------------------------------
def test_the_bits_depend_on_the_chunks_not_on_where_the_samples_come_from():
    setup = here()
    x, labels, graph = setup["x"], setup["labels"], setup["graph"]
    dataset = torch.utils.data.TensorDataset(x, labels)

    def generator(size):
        for start in range(0, len(x), size):
            yield x[start : start + size], labels[start : start + size]

    sources = {
        "map-style data set": dataset,
        "loader in order, batches of 4": torch.utils.data.DataLoader(dataset, batch_size=4),
        "stream of batches of 7": generator(7),
        "stream of batches of 1": generator(1),
    }
    common = dict(rule=rules.Gamma(0.25), chunk_size=5, batch_size=3, progress=False)
    expected = graphlrp.aggregate(graph, x, labels, **common)
    for name, source in sources.items():
        found = graphlrp.aggregate(graph, source, "label", **common)
        assert found.count == expected.count, name
        assert torch.equal(found.edge_relevance(), expected.edge_relevance()), name
        assert torch.equal(found.node_relevance, expected.node_relevance), name
    other = graphlrp.aggregate(graph, x, labels, **{**common, "chunk_size": 7})
    error = float((other.edge_relevance() - expected.edge_relevance()).abs().max()
                  / expected.edge_relevance().abs().max())
    assert error < 1e-14


def test_a_checkpoint_resumes_only_with_the_chunks_it_was_made_with(tmp_path):
    setup = here()
    path = tmp_path / "run.pt"
    graphlrp.aggregate(setup["graph"], setup["x"], 0, chunk_size=5, checkpoint=path, progress=False)
    with pytest.raises(InputError, match="chunk_size=5, batch_size=64; asked for chunk_size=6, batch_size=64"):
        graphlrp.aggregate(setup["graph"], setup["x"], 0, chunk_size=6, checkpoint=path, progress=False)
    with pytest.raises(InputError, match="holds 5 chunks of 5 samples; data holds 3"):
        graphlrp.aggregate(setup["graph"], setup["x"][:12], 0, chunk_size=5, checkpoint=path, progress=False)
    saved = torch.load(path, weights_only=True)
    assert saved["chunks"] == 5 and saved["chunking"] == [5, 64] and int(saved["counts"].sum()) == 23


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_runs_share_the_chunks_evenly_and_each_is_a_node_of_the_chunk_tree(size):
    from graphlrp.aggregation.chunks import Share
    from graphlrp.aggregation.core import IMBALANCE, LONGEST_RUN, _run_length

    for known in [1, 2, 3, 5, 16, 17, 24, 32, 33, 40, 64, 100, 257, 1000]:
        for done in sorted({0, 4, 16, known // 2 // 16 * 16}):
            if done > known:
                continue
            length = _run_length(known, done, size, None)
            assert length & (length - 1) == 0 and length <= LONGEST_RUN and done % length == 0
            explained = [list(Share(done, length, rank, size).indices(known)) for rank in range(size)]
            flat = sorted(index for share in explained for index in share)
            assert flat == list(range(done, known))  # every chunk left, once
            even = -(-(known - done) // size)
            assert max(map(len, explained)) <= even + int(even * IMBALANCE), (known, done, size, length)
