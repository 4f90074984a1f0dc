"""The learning rate of a resumed run's first step, from the schedule the run resumes under.

A checkpoint holds the optimizer's state, learning rate included: the rate the old schedule set
for the step after the checkpoint. A run resumed with a later end (`max_steps` or `epochs`
raised) gets a new schedule stretched to that end, and its scheduler continues from the
checkpoint's step, but the first step would still run at the optimizer's stored rate: 0 when the
old schedule had ended, so that step learned nothing. `StretchedSchedule` sets each parameter
group's rate (and the rate the scheduler reports) from the new schedule before the first step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def scheduled_rates(
    base_rates: Sequence[float], factors: Sequence[Callable[[int], float]], step: int
) -> list[float]:
    """Each parameter group's rate at `step`: its peak rate times its schedule's factor."""
    return [base * factor(step) for base, factor in zip(base_rates, factors, strict=True)]


def apply_schedule(optimizer: Any, scheduler: Any) -> list[float] | None:
    """Set the optimizer's rates to what `scheduler` (a LambdaLR, as every schedule of
    transformers is, possibly wrapped) gives at the step it stands at; the rates, or None for
    another kind of scheduler (left as it is)."""
    inner = getattr(scheduler, "scheduler", scheduler)
    factors = getattr(inner, "lr_lambdas", None)
    if optimizer is None or factors is None:
        return None
    rates = scheduled_rates(inner.base_lrs, factors, inner.last_epoch)
    for group, rate in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    inner._last_lr = list(rates)  # what get_last_lr() and the step's log report
    return rates


class StretchedSchedule(TrainerCallback):
    """On a resumed run, gives the first step the rate of the schedule it resumes under."""

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **_: Any,
    ) -> None:
        if state.global_step > 0 and lr_scheduler is not None:
            apply_schedule(optimizer, lr_scheduler)
