"""Trainer callbacks: the per-step JSONL log and the periodic token-weighted eval for the eval curve."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from oloraplus.io import append_jsonl
from oloraplus.optim.ratio import group_lrs


class JsonlLogCallback(TrainerCallback):
    """Appends one line per logging step: step, loss, lr of A and of B, grad norm."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, optimizer=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        lrs = group_lrs(optimizer) if optimizer is not None else {}
        record = {
            "step": state.global_step,
            "epoch": logs.get("epoch", state.epoch),
            "loss": logs["loss"],
            "grad_norm": logs.get("grad_norm"),
            "lr_A": lrs.get("A"),
            "lr_B": lrs.get("B"),
        }
        append_jsonl(self.path, record)


class PeriodicEvalCallback(TrainerCallback):
    """Every `every` steps, run `evaluate(model)` (all ranks) and log its metrics (rank 0)."""

    def __init__(self, every: int, evaluate: Callable[[Any], dict], path: str | Path):
        self.every = every
        self.evaluate = evaluate
        self.path = Path(path)

    def reads_weights_at(self, state) -> bool:
        return bool(self.every) and state.global_step % self.every == 0 and state.global_step < state.max_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.reads_weights_at(state):
            metrics = self.evaluate(model)
            if state.is_world_process_zero:
                append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, **metrics})


class DiagnosticsCallback(TrainerCallback):
    """Refinement vs exploration, logged as `diag_*` (mean over adapted layers) on a sparse schedule.

    Subspace distance of span(B_t) from span(B_0) = span(Q_r), relative change of A and B, and the
    effective rank of ΔW_t = s(B_tA_t − B_0A_0); see `oloraplus.eval.diagnostics`. They take the
    factors off the device and run batched float64 linear algebra on the CPU, so they run at step 1,
    every `every` steps (0: about ten points per run) and at the last step, not at every log.
    """

    POINTS = 10  # diagnostics per run when `every` is 0

    def __init__(self, initial: dict, path: str | Path, every: int = 0):
        self.initial = initial
        self.path = Path(path)
        self.every = every

    def reads_weights_at(self, state) -> bool:
        """Whether the diagnostics run at this step (`_NonFiniteWatch` checks the weights first)."""
        every = self.every or max(1, math.ceil(state.max_steps / self.POINTS))
        step = state.global_step
        return step == 1 or step % every == 0 or step >= state.max_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.reads_weights_at(state) or not state.is_world_process_zero:
            return
        from oloraplus.eval.diagnostics import adapter_diagnostics

        mean = adapter_diagnostics(model, self.initial)["mean"]
        append_jsonl(self.path, {"step": state.global_step, **{f"diag_{k}": v for k, v in mean.items()}})
