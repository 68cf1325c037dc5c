"""Learning-rate schedules: the factor on the base lr as a function of the optimizer step, stepped every iteration.

Each function is configured with `_partial_: true`; the module calls it with the run's `total_steps` and
`steps_per_epoch` and hands the result to `torch.optim.lr_scheduler.LambdaLR`, so a resumed run continues at the
exact step. Milestones and warmup are counted in `unit`: "step" (iterations), "epoch", or "fraction" of the run.
"""

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence

UNITS = ("step", "epoch", "fraction")
WARMUP_MODES = ("linear", "constant")
Schedule = Callable[[int], float]


def _steps(value: float, unit: str, total_steps: int, steps_per_epoch: int) -> int:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if unit == "fraction" and not math.isfinite(total_steps):
        raise ValueError("unit 'fraction' needs a finite run: set trainer.max_epochs or trainer.max_steps")
    scale = {"step": 1, "epoch": steps_per_epoch, "fraction": total_steps}[unit]
    return round(value * scale)


def _with_warmup(f: Schedule, warmup: int, mode: str, start: float) -> Schedule:
    """Linear: the factor rises from `start` to f(warmup); constant: `start` until step `warmup` (He et al. 2016,
    4.2: ResNet-110 trains at 0.1x until training error is below 80%, about 400 iterations)."""
    if mode not in WARMUP_MODES:
        raise ValueError(f"warmup_mode must be one of {WARMUP_MODES}, got {mode!r}")

    def schedule(step: int) -> float:
        if step >= warmup:
            return f(step)
        return start if mode == "constant" else start + (f(warmup) - start) * step / warmup

    return schedule


def multistep(
    total_steps: int,
    steps_per_epoch: int,
    milestones: Sequence[float],
    gamma: float = 0.1,
    unit: str = "step",
    warmup: float = 0,
    warmup_mode: str = "linear",
    warmup_start: float = 0.0,
    factors: Sequence[float] | None = None,
) -> Schedule:
    """The factor is multiplied by `gamma` at each milestone, or, with `factors`, set to factors[i] from milestone i on
    (LeCun et al. 1998, II.C: 0.0005 -> 0.0002 -> 0.0001 -> 0.00005 -> 0.00001 is factors [0.4, 0.2, 0.1, 0.02])."""
    bounds = sorted(_steps(m, unit, total_steps, steps_per_epoch) for m in milestones)
    if factors is None:
        levels = [gamma**i for i in range(len(bounds) + 1)]
    elif len(factors) != len(bounds):
        raise ValueError(f"factors needs one value per milestone {list(milestones)}, got {list(factors)}")
    else:
        levels = [1.0, *factors]
    return _with_warmup(lambda s: levels[bisect_right(bounds, s)], _steps(warmup, unit, total_steps, steps_per_epoch),
                        warmup_mode, warmup_start)


def cosine(
    total_steps: int,
    steps_per_epoch: int,
    final: float = 0.0,
    unit: str = "epoch",
    warmup: float = 0,
    warmup_mode: str = "linear",
    warmup_start: float = 0.0,
) -> Schedule:
    """Half a cosine from 1 at the end of warmup to `final` at the last step (Loshchilov & Hutter 2017, no restarts)."""
    w = _steps(warmup, unit, total_steps, steps_per_epoch)
    span = max(1, _steps(1, "fraction", total_steps, steps_per_epoch) - w)
    return _with_warmup(lambda s: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - w) / span))),
                        w, warmup_mode, warmup_start)


def constant(
    total_steps: int,
    steps_per_epoch: int,
    unit: str = "step",
    warmup: float = 0,
    warmup_mode: str = "linear",
    warmup_start: float = 0.0,
) -> Schedule:
    """The base lr throughout, after an optional warmup."""
    return _with_warmup(lambda s: 1.0, _steps(warmup, unit, total_steps, steps_per_epoch), warmup_mode, warmup_start)


def triangular(
    total_steps: int,
    steps_per_epoch: int,
    peak: float = 0.23,
    start: float = 0.2,
    end: float = 0.07,
    unit: str = "fraction",
) -> Schedule:
    """Linear from `start` up to 1 at `peak`, then linear down to `end` at the last step: Page's one-cycle ResNet-9
    schedule (0 -> peak at epoch 5 of 24 -> 0) and airbench94's (0.2 -> 1 at 23% -> 0.07, Jordan 2024)."""
    top = _steps(peak, unit, total_steps, steps_per_epoch)
    last = _steps(1, "fraction", total_steps, steps_per_epoch)
    if not 0 < top < last:
        raise ValueError(f"peak must fall inside the run (step {top} of {last}), got peak={peak} {unit}")
    return lambda s: start + (1 - start) * s / top if s < top else 1 + (end - 1) * min(1.0, (s - top) / (last - top))
