"""Model EMA for any run (callbacks=ema, cnnlab.callbacks.EMA): the same numbers as Lightning's EMAWeightAveraging,
on the foreach path, reading nothing from the device."""

import pytest
import torch
from conftest import TINY, compose_run, run_train
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from cnnlab.callbacks import EMA
from cnnlab.models import ResNet


def test_ema_equals_lightnings_bit_for_bit_without_reading_the_device(monkeypatch):
    torch.manual_seed(0)
    model = ResNet([1, 1, 1], [4, 8, 16], stem="cifar", shortcut="A", num_classes=10)  # BN: float and int buffers
    decay = 0.7737809374999998  # cifar10_fast's
    reference = AveragedModel(model, avg_fn=get_ema_avg_fn(decay), use_buffers=True)  # what Lightning builds
    ema = EMA(decay=decay)
    ema._average_model = AveragedModel(model, use_buffers=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.randint(0, 10, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        reference.update_parameters(model)  # reads n_averaged on the host at every update
        with monkeypatch.context() as m:  # ours: nothing read from the device
            for name in ("item", "__bool__", "tolist", "cpu", "__float__", "__int__"):
                m.setattr(torch.Tensor, name, lambda *a, _n=name, **k: pytest.fail(f"Tensor.{_n} called"))
            ema._update(model)
    ours, theirs = ema._average_model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    assert not torch.equal(ours["module.fc.weight"], model.fc.weight)  # an average, not a copy
    assert int(ours["n_averaged"]) == 6


def test_ema_is_a_callbacks_option(tmp_path):
    cfg = compose_run(["callbacks=ema", "callbacks.ema.decay=0.99"], tmp_path / "a")
    assert cfg.callbacks.ema._target_ == "cnnlab.callbacks.EMA" and cfg.callbacks.ema.decay == 0.99
    assert "best" in cfg.callbacks and "divergence" in cfg.callbacks  # the defaults stay
    assert issubclass(EMA, EMAWeightAveraging)  # Lightning's checkpoint format, swaps for validation


def test_ema_run_checkpoints_the_average_and_resumes(tmp_path):
    run = [*TINY, "callbacks=ema", "callbacks.ema.decay=0.9", "trainer.max_epochs=1"]
    run_train(run, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    trained, average = ckpt["current_model_state"], ckpt["state_dict"]
    assert not torch.equal(trained["model.fc.weight"], average["model.fc.weight"])
    assert int(ckpt["averaging_state"]["n_averaged"]) == 6  # 6 steps, one update each
    run_train([*run, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 12
