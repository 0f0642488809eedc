"""Trainer callbacks: the per-step JSONL log and console progress, the periodic token-weighted eval, diagnostics,
and where TensorBoard writes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import Trainer, TrainerCallback

from oloraplus.console import progress_enabled, say, use_bar
from oloraplus.io import append_jsonl
from oloraplus.optim.ratio import group_lrs


def keep_tensorboard_logs(trainer: Trainer, log_dir: Path) -> None:
    """Send `--report-to tensorboard`'s event files to `log_dir` (RUN/tensorboard/): the Trainer's default is
    under its output_dir, the run's checkpoints/, which is deleted when the run finishes. A directory the user
    chose with TENSORBOARD_LOGGING_DIR is kept."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(log_dir)


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


BUDGET = 0.02  # the largest share of the training loop the automatic diagnostics schedule may take


def _synchronize(device: torch.device | None) -> None:
    """Wait for the device's queued work, so a timing covers exactly the calls between two waits."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def _rank0s(decision: str | None) -> str | None:
    """Rank 0's decision on every rank (--fsdp: all ranks must take part in the same diagnostics calls)."""
    import torch.distributed as dist

    box = [decision]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DiagnosticsCallback(TrainerCallback):
    """Refinement vs exploration, logged as `diag_*` (mean over adapted layers) on a schedule that costs
    at most `budget` (2 %) of the training loop.

    Subspace distance of span(B_t) from span(B_0) = span(Q_r), relative change of A and B, and the
    effective rank of ΔW_t = s(B_tA_t − B_0A_0); see `oloraplus.eval.diagnostics`. A call costs from
    milliseconds (a GPU, batched per layer shape) to about a second (SmolLM2 on a CPU), so the schedule
    is derived from the measured cost rather than fixed:

    - `every` 0 (auto): at the first step a probe times the largest part of a call (one layer, or one shape group
      when batched) and predicts the whole call's cost; each call is timed (the device synchronised around
      it) and replaces the prediction. A call runs at a logging step (`logging_steps`) only if the time spent
      on diagnostics, this call included, stays ≤ `budget` × the loop time so far. The adapter's final state
      is measured after the loop (`on_train_end`: outside `train_runtime`), so the curve always ends there.
    - `every` N > 0: step 1, every N steps and the last step, whatever they cost (the user asked for them).

    The initial factors move to the model's device once, at the start. At the end the calls, their seconds
    and their share of the loop go to the console and, through `summary`, to metrics.json.
    """

    def __init__(self, initial: dict, path: str | Path, every: int = 0, logging_steps: int = 1, *,
                 budget: float = BUDGET, clock: Callable[[], float] = time.perf_counter,
                 measure: Callable[[Any, dict], dict] | None = None, sharded: bool = False):
        self.initial = initial
        self.sharded = sharded
        self.path = Path(path)
        self.every = every
        self.logging_steps = max(logging_steps, 1)
        self.budget = budget
        self.clock = clock
        self.measure = measure  # (model, initial) -> {"mean": {...}}; default adapter_diagnostics
        self.device = None
        self.start = 0.0  # clock at the start of the loop
        self.spent = 0.0  # seconds of diagnostics (and probe) inside the loop
        self.after_loop_s = 0.0
        self.loop_s = 0.0  # the loop's length, read at its end
        self.calls = 0
        self.cost: float | None = None  # predicted (then measured) seconds of one call
        self.last_step = -1  # the last step whose adapter was measured
        self.decided: tuple[int, str | None] = (-1, None)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            from oloraplus.eval.diagnostics import factors_on

            self.device = next((p.device for p in model.parameters() if p.requires_grad), None)
            if self.device is not None:
                self.initial = factors_on(self.initial, self.device)
        self.start = self.clock()

    def decision(self, state) -> str | None:
        """'full', 'probe' or None at this step; decided once per step (the watch asks first, then this)."""
        step = state.global_step
        if self.decided[0] != step:
            self.decided = (step, self._decide(state))
        return self.decided[1]

    def _decide(self, state) -> str | None:
        step = state.global_step
        # Only rank 0 measures, except under --fsdp: there the factors are gathered from every rank's shard (a
        # collective), so every rank takes the same decision: rank 0's, sent at a logging step (a host sync anyway).
        if not (state.is_world_process_zero or self.sharded):
            return None
        if self.every:
            return "full" if step == 1 or step % self.every == 0 or step >= state.max_steps else None
        if self.cost is None:
            return "probe" if self.initial else None
        if step % self.logging_steps or step >= state.max_steps:  # the last state is measured after the loop
            return None
        elapsed = self.clock() - self.start
        verdict = "full" if self.spent + self.cost <= self.budget * (elapsed + self.cost) else None
        return _rank0s(verdict) if self.sharded else verdict

    def reads_weights_at(self, state) -> bool:
        """Whether the diagnostics read the weights at this step (`_NonFiniteWatch` checks them first)."""
        return self.decision(state) is not None

    def _measure(self, model, initial: dict) -> tuple[dict, float]:
        if self.measure is None:
            from oloraplus.eval.diagnostics import adapter_diagnostics

            measure = adapter_diagnostics
        else:
            measure = self.measure
        _synchronize(self.device)
        t0 = self.clock()
        mean = measure(model, initial)["mean"]
        _synchronize(self.device)
        return mean, self.clock() - t0

    def _log(self, state, mean: dict, **extra) -> None:
        self.last_step = state.global_step
        if state.is_world_process_zero:
            append_jsonl(self.path, {"step": state.global_step, **{f"diag_{k}": v for k, v in mean.items()}, **extra})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        what = self.decision(state)
        if what is None:
            return
        if what == "probe":
            from oloraplus.eval.diagnostics import cost_probe, default_batched

            part, units = cost_probe(self.initial, default_batched(self.device or torch.device("cpu")))
            _, seconds = self._measure(model, part)
            self.spent += seconds
            self.cost = seconds * units
            return
        mean, seconds = self._measure(model, self.initial)
        self.spent += seconds
        self.cost = seconds
        self.calls += 1
        self._log(state, mean)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not (state.is_world_process_zero or self.sharded):
            return
        self.loop_s = self.clock() - self.start
        if self.last_step != state.global_step and model is not None and self.initial:
            mean, self.after_loop_s = self._measure(model, self.initial)
            self._log(state, mean)
        say(f"diagnostics: {self.calls} call(s) in the loop, {self.spent:.2f} s "
            f"({100 * self.spent / max(self.loop_s, 1e-9):.1f} % of it)"
            + (f", the final state after it ({self.after_loop_s:.2f} s)" if self.after_loop_s else ""))

    def summary(self) -> dict[str, float | int]:
        """What the diagnostics cost this session (metrics.json): calls and seconds in the loop (probe
        included), their share of the loop, and the seconds of the final state measured after it."""
        return {"diagnostics_calls": self.calls, "diagnostics_s": self.spent,
                "diagnostics_loop_share": self.spent / max(self.loop_s, 1e-9),
                "diagnostics_after_loop_s": self.after_loop_s}
