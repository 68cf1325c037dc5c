"""No host-device sync in a steady training step: between two logging steps (trainer.log_every_n_steps) a train.py
run makes no call that would wait for an accelerator. On the CPU nothing waits, so the calls that would are counted:
Tensor.item/bool/float/int/tolist/numpy/cpu, .to() onto the CPU, and the dispatcher ops whose result the host must
read (aten._local_scalar_dense, nonzero, masked_select, unique, equal, is_nonzero)."""

import traceback
from collections import Counter

import lightning as L
import pytest
import torch
from conftest import TINY, run_train
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy", "cpu")
HOST_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
            "unique_consecutive", "equal", "is_nonzero"}


class SyncCounter(TorchDispatchMode):
    """Counts sync-forcing calls while `on`; `calls` keeps where each happened (innermost cnnlab/lightning frame)."""

    def __init__(self) -> None:
        super().__init__()
        self.on, self.calls = False, Counter()

    def record(self, what: str) -> None:
        if self.on:
            frames = [f for f in traceback.extract_stack()[:-2] if "test_sync" not in f.filename]
            if what == "Tensor.to(cpu)" and any(f.name == "transfer_batch_to_device" for f in frames):
                return  # the batch onto the training device (host to device on an accelerator)
            where = next((f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in reversed(frames)
                          if "cnnlab" in f.filename or "lightning" in f.filename or "torchmetrics" in f.filename), "?")
            self.calls[f"{what} at {where}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in HOST_OPS:
            self.record(f"aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


COUNTER = SyncCounter()


class SyncWindow(L.Callback):
    """Counts from the start of the step after the third logging step to the start of the fourth: in the second epoch,
    after a validation, epoch-end logging and a checkpoint."""

    def __init__(self) -> None:
        self.logging_steps: list[int] = []
        self.window: Counter | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer._logger_connector.should_update_logs:
            self.logging_steps.append(trainer.global_step)
            if len(self.logging_steps) == 4:  # the window ends where the fourth logging step starts
                COUNTER.on, self.window = False, Counter(COUNTER.calls)
        elif len(self.logging_steps) == 3 and not COUNTER.on:
            COUNTER.on = True


def counting(name: str):
    original = getattr(torch.Tensor, name)

    def wrapper(self, *args, **kwargs):
        COUNTER.record(f"Tensor.{name}")
        return original(self, *args, **kwargs)

    return wrapper


def to_host(original):
    def wrapper(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, str | torch.device) and torch.device(target).type == "cpu":
            COUNTER.record("Tensor.to(cpu)")
        return original(self, *args, **kwargs)

    return wrapper


@pytest.fixture
def counter(monkeypatch):
    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    monkeypatch.setattr(torch.Tensor, "to", to_host(torch.Tensor.to))
    COUNTER.on, COUNTER.calls = False, Counter()
    return COUNTER


def test_no_sync_between_two_logging_steps(counter, tmp_path):
    """12 steps of batch 16 per epoch, logged every 5: steps 15-18 (epoch 2) lie between the logging steps 14 and 19."""
    window = SyncWindow()
    callbacks = L.Trainer.__init__

    def with_window(self, *args, **kwargs):
        callbacks(self, *args, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), window]})

    mp = pytest.MonkeyPatch()
    mp.setattr(L.Trainer, "__init__", with_window)
    try:
        with counter:
            run_train([*TINY, "data.batch_size=16", "trainer.max_epochs=2", "trainer.log_every_n_steps=5",
                       "callbacks.progress_bar.refresh_rate=1"], tmp_path)
    finally:
        mp.undo()
    assert window.logging_steps[:4] == [4, 9, 14, 19] and window.window is not None
    assert dict(window.window) == {}, "\n".join(f"{v} x {k}" for k, v in window.window.items())
    counter.on = True  # the counter works: the epoch's end reads the device (epoch metrics)
    torch.ones(1).item()
    assert sum(counter.calls.values()) == 1
