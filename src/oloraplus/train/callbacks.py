"""Trainer callbacks: the per-step JSONL log and the periodic token-weighted eval for the eval curve."""

from __future__ import annotations

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

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            metrics = self.evaluate(model)
            if state.is_world_process_zero:
                append_jsonl(self.path, {"step": state.global_step, "epoch": state.epoch, **metrics})


class DiagnosticsCallback(TrainerCallback):
    """Refinement vs exploration, logged at every logging step as `diag_*` (mean over adapted layers).

    Subspace distance of span(B_t) from span(B_0) = span(Q_r), relative change of A and B, and the
    effective rank of ΔW_t = s(B_tA_t − B_0A_0); see `oloraplus.eval.diagnostics`.
    """

    def __init__(self, initial: dict, path: str | Path):
        self.initial = initial
        self.path = Path(path)

    def _log(self, state, model) -> None:
        from oloraplus.eval.diagnostics import adapter_diagnostics

        if not state.is_world_process_zero:
            return
        mean = adapter_diagnostics(model, self.initial)["mean"]
        append_jsonl(self.path, {"step": state.global_step, **{f"diag_{k}": v for k, v in mean.items()}})

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._log(state, model)
