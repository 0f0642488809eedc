"""Trainer callbacks: the per-step JSONL log and console progress, the periodic token-weighted eval, diagnostics."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from transformers import TrainerCallback

from oloraplus.console import progress_enabled, say, use_bar
from oloraplus.io import append_jsonl
from oloraplus.optim.ratio import group_lrs


class JsonlLogCallback(TrainerCallback):
    """One record per logging step (step, loss, lr of A and of B, grad norm), to log.jsonl and to the console.

    The console line is built from the same record, so the two never disagree. The learning rates are the
    ones the logged step used (read before the scheduler steps, as the Trainer's own `learning_rate`), and
    the last step is always logged, so a short run's curve ends where the run ends. It also keeps where this
    session started (step, tokens, time): a resumed run's throughput covers only what it ran itself.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.step_lrs: dict[str, float] = {}
        self.start_step = 0
        self.start_tokens = 0
        self.start_time = time.perf_counter()
        self.started = False
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = time.perf_counter()
        self.started = False

    def on_step_begin(self, args, state, control, **kwargs):
        """The session's start, read at its first step: a resumed Trainer loads the checkpoint's state after
        `on_train_begin` and counts the first batch's tokens after this event."""
        if not self.started:
            self._start(state)

    def _start(self, state) -> None:
        self.started = True
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen
        if state.is_world_process_zero and use_bar():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:  # plain Python floats: no device read
            self.step_lrs = group_lrs(optimizer)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.started:  # resumed at the last step: nothing ran
            self._start(state)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def tokens_per_s(self, state) -> float:
        """Real tokens per second of this session (not since a resumed run first started)."""
        return (state.num_input_tokens_seen - self.start_tokens) / max(time.perf_counter() - self.start_time, 1e-9)

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, optimizer=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        lrs = self.step_lrs or (group_lrs(optimizer) if optimizer is not None else {})
        record = {
            "step": state.global_step,
            "epoch": logs.get("epoch", state.epoch),
            "loss": logs["loss"],
            "grad_norm": logs.get("grad_norm"),
            "lr_A": lrs.get("A"),
            "lr_B": lrs.get("B"),
        }
        append_jsonl(self.path, record)
        self.show(record, state)

    def show(self, record: dict[str, Any], state) -> None:
        text = f"loss {record['loss']:.4f}  lr_A {_num(record['lr_A'])}  lr_B {_num(record['lr_B'])}  " \
               f"{self.tokens_per_s(state):.0f} tokens/s"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif progress_enabled():
            say(f"step {record['step']}/{state.max_steps}  {text}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


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
    effective rank of ΔW_t = s(B_tA_t − B_0A_0); see `oloraplus.eval.diagnostics`. A call costs
    about a second on a CPU (hundreds of float64 QRs; batched per layer shape on a GPU), so they run at
    step 1, every `every` steps and at the last step, not at every log. `every` 0 (auto): about ten
    points per run, and never more often than the loss is logged (`logging_steps`).
    """

    POINTS = 10  # diagnostics per run when `every` is 0

    def __init__(self, initial: dict, path: str | Path, every: int = 0, logging_steps: int = 1,
                 sharded: bool = False):
        self.initial = initial
        self.sharded = sharded
        self.path = Path(path)
        self.every = every
        self.logging_steps = logging_steps

    def reads_weights_at(self, state) -> bool:
        """Whether the diagnostics run at this step (`_NonFiniteWatch` checks the weights first)."""
        every = self.every or max(self.logging_steps, math.ceil(state.max_steps / self.POINTS))
        step = state.global_step
        return step == 1 or step % every == 0 or step >= state.max_steps

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # --fsdp: the factors are gathered from every rank's shard, so every rank computes them
        if not self.reads_weights_at(state) or not (state.is_world_process_zero or self.sharded):
            return
        from oloraplus.eval.diagnostics import adapter_diagnostics

        mean = adapter_diagnostics(model, self.initial)["mean"]
        if state.is_world_process_zero:
            append_jsonl(self.path, {"step": state.global_step, **{f"diag_{k}": v for k, v in mean.items()}})
