"""``--device``: the model, the inputs and the graph go to the device named; a device this machine
does not have is refused with a usage error saying what is available."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphlrp
from graphlrp import cli, rules
from graphlrp.devices import check_available
from graphlrp.errors import DeviceError

FACTORY = '''
import torch
import torch.nn as nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
'''


@pytest.fixture
def files(tmp_path):
    (tmp_path / "factory.py").write_text(FACTORY)
    x = torch.rand(5, 6)
    torch.save(x, tmp_path / "x.pt")
    return tmp_path, x


def test_explain_on_the_cpu_device_gives_the_librarys_relevance(files):
    root, x = files
    out = root / "r.pt"
    assert cli.main(["explain", f"{root / 'factory.py'}:make", str(root / "x.pt"), "--out", str(out),
                     "--device", "cpu", "--target", "1", "-q"]) == cli.EXIT_OK
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    expected = graphlrp.explain(graphlrp.lower(model, x), x, target=1, rule=rules.Epsilon(1e-6)).input_relevance
    torch.testing.assert_close(torch.load(out), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_an_unavailable_device_is_a_usage_error_naming_it(files, capsys, device):
    root, _ = files
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explain", f"{root / 'factory.py'}:make", str(root / "x.pt"), "--out", str(root / "r.pt"),
                  "--device", device])
    assert exit_.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"argument --device: device '{device}' is not available: torch {torch.__version__} sees no CUDA GPU" in err
    assert not (root / "r.pt").exists()


@pytest.mark.parametrize("text, message", [("gpu", "'gpu' is not a device; use 'cpu', 'cuda', 'cuda:N' or 'mps'"),
                                           ("meta", "device 'meta' is not available here; use 'cpu'")])
def test_what_is_not_a_device_for_data_is_refused(text, message):
    with pytest.raises(DeviceError, match=message):
        check_available(text)
    assert isinstance(DeviceError("x"), RuntimeError)


def test_the_cpu_is_always_available():
    assert check_available("cpu") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_explain_on_cuda_matches_the_cpu(files):
    root, x = files
    outs = {device: root / f"r-{device}.pt" for device in ("cpu", "cuda")}
    for device, out in outs.items():
        assert cli.main(["explain", f"{root / 'factory.py'}:make", str(root / "x.pt"), "--out", str(out),
                         "--device", device, "--target", "1", "-q"]) == cli.EXIT_OK
    torch.testing.assert_close(torch.load(outs["cuda"]), torch.load(outs["cpu"]), rtol=1e-4, atol=1e-6)
