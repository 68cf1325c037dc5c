"""cnnlab.export on checkpoints of tiny real runs: TorchScript and ONNX files reproduce the checkpoint's logits (any
batch size), carry the preprocessing metadata, and an export that does not match is caught."""

import json
from pathlib import Path

import conftest
import pytest
import torch
from conftest import run_train
from torch import nn

from cnnlab.export import export, main
from cnnlab.predict import load

QUICK = list(conftest.QUICK)


@pytest.fixture
def ckpt(tiny_ckpt: Path) -> Path:
    return tiny_ckpt  # conftest: trained once per session


def test_torchscript_export_reproduces_the_checkpoint(ckpt, tmp_path, capsys):
    main([f"ckpt={ckpt}", "format=torchscript", f"out={tmp_path}/model.pt"])
    assert "outputs match the checkpoint" in capsys.readouterr().out
    extra = {"cnnlab.json": ""}
    scripted = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    ck = load(ckpt)
    meta = json.loads(extra["cnnlab.json"])  # one level: lists, not JSON strings inside JSON
    assert meta == {"classes": ck.classes, "mean": ck.mean.flatten().tolist(), "std": ck.std.flatten().tolist(),
                    "input_shape": [3, 32, 32]}
    assert meta["classes"] == [f"class{i}" for i in range(10)] and len(meta["mean"]) == 3
    x = torch.randn(7, 3, 32, 32)  # another batch size than the traced one
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), ck.model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model", ["resnet20", "nin"])
def test_onnx_export_reproduces_the_checkpoint_in_onnxruntime(model, ckpt, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    if model != "resnet20":  # nn.Sequential networks name their input differently; the export must not care
        run_train([*QUICK, f"model={model}"], tmp_path / "run")
        ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ck = load(ckpt)
    worst = export(ck, "onnx", tmp_path / "model.onnx")
    assert worst < 1e-4
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), ck.model(x), atol=1e-4, rtol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    meta = json.loads(props["cnnlab"])  # one property, one parse
    assert meta["classes"] == ck.classes and meta["input_shape"] == [3, 32, 32] and len(meta["std"]) == 3


class Noisy(nn.Module):
    """A network whose outputs change from call to call: no export can reproduce it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.rand_like(self.net(x))


def test_an_export_that_does_not_match_is_caught_and_bad_format_named(ckpt, tmp_path):
    ck = load(ckpt)
    ck.model = Noisy(ck.model).eval()
    with pytest.raises(AssertionError, match="does not reproduce the checkpoint"):
        export(ck, "torchscript", tmp_path / "noisy.pt")
    with pytest.raises(ValueError, match="format must be one of .* got 'tflite'"):
        export(load(ckpt), "tflite", tmp_path / "m.tflite")
