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


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'iters'"):
        multistep(100, 10, milestones=[1], unit="iters")
    with pytest.raises(ValueError, match="'cosine'"):
        constant(100, 10, warmup=5, warmup_mode="cosine")
    with pytest.raises(ValueError, match="max_epochs or trainer.max_steps"):
        multistep(float("inf"), 10, milestones=[0.5], unit="fraction")
