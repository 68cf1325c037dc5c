"""Schedules are per-iteration factors on the base lr: milestones in steps, epochs or fractions; warmup."""

import math

import pytest

from cnnlab.schedule import constant, cosine, multistep


def test_multistep_at_he2016_iterations():
    f = multistep(64000, 352, milestones=[32000, 48000], unit="step")
    assert [f(0), f(31999), f(32000), f(47999), f(48000), f(63999)] == pytest.approx([1, 1, .1, .1, .01, .01])


def test_multistep_in_epochs_and_fractions_agree():
    by_epoch = multistep(1000, 10, milestones=[50, 75], unit="epoch")
    by_fraction = multistep(1000, 10, milestones=[0.5, 0.75], unit="fraction")
    assert [by_epoch(s) for s in range(1000)] == [by_fraction(s) for s in range(1000)]
    assert by_epoch(499) == 1 and by_epoch(500) == pytest.approx(0.1)


def test_warmup_linear_and_constant():
    f = cosine(100, 10, unit="step", warmup=10, warmup_start=0.0)
    assert f(0) == 0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1) and f(100) == pytest.approx(0)
    assert f(55) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    g = multistep(64000, 352, milestones=[32000], warmup=400, warmup_mode="constant", warmup_start=0.1)
    assert g(0) == g(399) == 0.1 and g(400) == 1  # ResNet-110's 0.01 then 0.1 (He et al. 2016, 4.2)
    assert constant(10, 1)(7) == 1


def test_multistep_with_factors_is_lecuns_piecewise_constant_schedule():
    f = multistep(20, 1, milestones=[2, 5, 8, 12], unit="epoch", factors=[0.4, 0.2, 0.1, 0.02])
    assert [0.0005 * f(s) for s in (0, 1, 2, 4, 5, 7, 8, 11, 12, 19)] == pytest.approx(
        [5e-4, 5e-4, 2e-4, 2e-4, 1e-4, 1e-4, 5e-5, 5e-5, 1e-5, 1e-5])  # LeCun et al. 1998, II.C


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'iters'"):
        multistep(100, 10, milestones=[1], unit="iters")
    with pytest.raises(ValueError, match="'cosine'"):
        constant(100, 10, warmup=5, warmup_mode="cosine")
    with pytest.raises(ValueError, match=r"one value per milestone \[2, 5\], got \[0.4\]"):
        multistep(20, 1, milestones=[2, 5], factors=[0.4])
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        multistep(float("inf"), 10, milestones=[0.5], unit="fraction")


# --------------------------------------------------------------------------- ResNet-110's warm-up (cnnlab.warmup)
def _lr_and_end(run_dir) -> tuple[list[float], list[float]]:
    """The lr of every optimizer step (LearningRateMonitor's lr-SGD) and the logged warmup/end_step values."""
    import csv

    with next(run_dir.glob("csv/version_*/metrics.csv")).open() as f:
        rows = list(csv.DictReader(f))
    lrs = {int(r["step"]): float(r["lr-SGD"]) for r in rows if r.get("lr-SGD")}
    ends = {float(r["warmup/end_step"]) for r in rows if r.get("warmup/end_step")}
    return [lrs[s] for s in sorted(lrs)], sorted(ends)


def _warmup_run(tmp_path, *overrides: str):
    """experiment=he2016_cifar110 for 6 steps of 16 synthetic images on ResNet-20, lr constant after the warm-up."""
    from conftest import run_train

    run_train(["experiment=he2016_cifar110", "model=resnet20", "data=synthetic", "data.synthetic_size=[96,32]",
               "data.val_split=32", "data.batch_size=16", "module.reference_batch=16", "schedule.milestones=[1000]",
               "trainer.max_steps=6", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
               "trainer.limit_val_batches=1", "callbacks.progress_bar.refresh_rate=0", *overrides], tmp_path)
    return _lr_and_end(tmp_path)


def test_warmup_ends_when_the_running_training_error_drops_below_the_threshold(tmp_path):
    # An untrained 10-way net misclassifies about 90%: a threshold of 99% is met as soon as the 2-batch window is
    # full (after step 2), one of 1% never within 6 steps; the lr is 0.01 during the warm-up, 0.1 after.
    lrs, end = _warmup_run(tmp_path / "met", "callbacks.warmup.below=0.99", "callbacks.warmup.window=2")
    assert end == [2.0]
    assert lrs == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.1, 0.1])
    lrs, end = _warmup_run(tmp_path / "unmet", "callbacks.warmup.below=0.01", "callbacks.warmup.window=2")
    assert end == [] and lrs == pytest.approx([0.01] * 6)


def test_warmup_fixed_form_ends_at_max_steps_as_the_schedules_constant_warmup(tmp_path):
    lrs, end = _warmup_run(tmp_path / "cb", "callbacks.warmup.below=null", "callbacks.warmup.max_steps=3")
    assert end == [3.0] and lrs == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.1])
    # the same numbers from conf/schedule's fixed warm-up, without the callback
    lrs, _ = _warmup_run(tmp_path / "sched", "~callbacks.warmup", "schedule.warmup=3", "schedule.warmup_mode=constant",
                         "schedule.warmup_start=0.1")
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1, 0.1])


def test_warmup_state_survives_a_checkpoint_and_bad_settings_are_named():
    from cnnlab.warmup import WarmupUntilError

    cb = WarmupUntilError(below=0.8, window=3)
    cb.load_state_dict({"ended_at": 412, "errors": [(90.0, 128.0)]})  # a checkpoint's state
    restored = WarmupUntilError(below=0.8, window=3)
    restored.load_state_dict(cb.state_dict())
    assert restored.ended_at == 412 and not restored.warming and restored.state_dict()["errors"] == [[90.0, 128.0]]
    for kw, match in ((dict(factor=0), "factor"), (dict(below=1.5), "below"), (dict(window=0), "window"),
                      (dict(below=None), "needs max_steps")):
        with pytest.raises(ValueError, match=match):
            WarmupUntilError(**kw)
