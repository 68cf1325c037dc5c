"""module.compile takes torch.compile's mode; a compiled run is the same training as the eager one (losses over 20
steps); CUDA-graph modes get static training shapes (the last partial batch dropped)."""

import pytest
import torch
from conftest import TINY, compose_run, record_losses, run_train
from hydra.utils import instantiate

from cnnlab.module import ClassifierModule

# 20 steps of 16 synthetic images on a 3-block ResNet of width 4, one epoch: a tiny graph to compile.
RUN = [*TINY, "data.synthetic_size=[320,32]", "data.batch_size=16", "trainer.max_epochs=1", "model.depths=[1,1,1]",
       "model.widths=[4,4,4]", "trainer.limit_val_batches=0", "trainer.limit_test_batches=0"]


def losses(tmp_path, monkeypatch, *overrides: str) -> list[float]:
    out = record_losses(monkeypatch)
    run_train([*RUN, *overrides], tmp_path)
    return [x.item() for x in out]


@pytest.fixture
def compiled_modes(monkeypatch) -> list:
    """nn.Module.compile records the mode asked for and compiles with the aot_eager backend: TorchDynamo's graph
    capture and AOTAutograd's joint forward-backward graph, as inductor gets them, without inductor's codegen
    (minutes on this CPU)."""
    modes, compile_ = [], torch.nn.Module.compile

    def aot_eager(self, *args, mode=None, **kwargs):
        modes.append(mode)
        compile_(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", aot_eager)
    torch._dynamo.reset()
    yield modes
    torch._dynamo.reset()


def test_compiled_training_equals_eager_over_20_steps(tmp_path, monkeypatch, compiled_modes):
    eager = losses(tmp_path / "eager", monkeypatch)
    compiled = losses(tmp_path / "compiled", monkeypatch, "module.compile=default")
    assert compiled_modes == ["default"] and len(eager) == 20
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert compiled[-1] < compiled[0]  # it trains


@pytest.mark.slow
def test_inductor_compiled_training_equals_eager_over_20_steps(tmp_path, monkeypatch):
    """The real thing: torch.compile's default mode (inductor's CPU code) against eager, 20 steps."""
    torch._dynamo.reset()
    eager = losses(tmp_path / "eager", monkeypatch)
    compiled = losses(tmp_path / "compiled", monkeypatch, "module.compile=default")
    torch._dynamo.reset()
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_compile_modes_and_static_shapes(tmp_path, monkeypatch, compiled_modes):
    cfg = compose_run(["data=synthetic", "data.synthetic_size=[100,20]", "data.batch_size=32"], tmp_path)
    for value, mode in ((False, None), (True, "default"), ("default", "default"),
                        ("reduce-overhead", "reduce-overhead"), ("max-autotune", "max-autotune")):
        module = ClassifierModule(instantiate(cfg.model), None, None, num_classes=10, compile=value)
        assert module.compile_mode == mode
    with pytest.raises(ValueError, match="module.compile must be .* got 'fast'"):
        ClassifierModule(instantiate(cfg.model), None, None, num_classes=10, compile="fast")
    # 100 images in batches of 32: 4 batches eager (the last of 4 images), 3 full ones under a CUDA-graph mode
    run_train([*RUN, "data.synthetic_size=[100,20]", "data.batch_size=32", "module.compile=reduce-overhead"],
              tmp_path / "graphs")
    ckpt = torch.load(tmp_path / "graphs" / "checkpoints" / "last.ckpt", weights_only=True)
    assert compiled_modes == ["reduce-overhead"] and ckpt["global_step"] == 3
    run_train([*RUN, "data.synthetic_size=[100,20]", "data.batch_size=32"], tmp_path / "eager")
    assert torch.load(tmp_path / "eager" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
