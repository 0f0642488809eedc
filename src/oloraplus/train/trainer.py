"""`transformers.Trainer` with the λ optimizer: the loop, accumulation, schedulers, DDP and logging stay HF's.

Three additions make long runs safe: checkpoints are staged and renamed into place (see
`oloraplus.train.checkpoint`), the loss accumulators travel with each checkpoint so a resumed run
reports what an uninterrupted one would, and a non-finite loss or parameter stops the run before
a poisoned checkpoint can be written. None of them makes the GPU wait for the host inside a step:
the step launches no `.item()` or data-dependent shape (the collator computes counts and positions
on the CPU), so the host queues the next step while the GPU runs this one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from oloraplus.data.collate import REAL_TOKENS, model_inputs
from oloraplus.errors import NonFiniteLossError
from oloraplus.train import checkpoint, fsdp
from oloraplus.train.mixin import RatioOptimizerMixin
from oloraplus.eval.fast_loss import response_only_loss, supports_response_only_loss

LOSS_STATE = "oloraplus_loss_state-{rank}.json"  # per process: each one accumulates its own pending loss
# What a failed checkpoint write raises: OSError from Python and fsync, RuntimeError from torch.save
# ("PytorchStreamWriter failed writing file" on a full disk), SafetensorError from safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class _NonFiniteWatch(TrainerCallback):
    """Stops a diverged run before anything reads or writes its weights, without a host sync per step.

    After every optimizer step the watch keeps one small device row, [the step's loss, Σ max |θ| over the
    parameters], five tiny ops and no `.item()`. The host reads the rows kept so far only where the Trainer or a
    callback is about to use the weights anyway: a logging, saving or evaluation step, a callback's own schedule
    (`reads_weights_at`), the end of training. A run therefore still stops at the first bad step it reaches
    there, naming the step where the loss or weights first went non-finite. Sharded (FSDP), the ranks agree at
    that read, in one all-reduce: all ranks stop, or none.
    """

    LOSS, PARAMS = 1, 2  # why the step was bad

    def __init__(self, trainer: "RatioTrainer"):
        self.trainer = trainer
        self.params: list[torch.Tensor] | None = None
        self.sharded = False
        self.rows: list[tuple[int, torch.Tensor]] = []  # (step, [loss, Σ max |θ|]) not yet read

    def on_train_begin(self, args, state, control, **kwargs):
        self.params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        self.sharded = fsdp.is_sharded(self.trainer.model)
        self.rows = []

    @torch.no_grad()  # the parameters' norms without autograd's bookkeeping (a detach per parameter)
    def on_optimizer_step(self, args, state, control, **kwargs):
        loss = self.trainer.step_loss()
        if loss is None or not self.params:
            return
        # max |θ| per parameter, one fused launch per dtype/device group; their fp64 sum is finite exactly when
        # every parameter is (fp32's largest value times 10⁹ parameters is still finite in fp64)
        norms = torch._foreach_norm(fsdp.local_shards(self.params), float("inf"))
        params = torch.stack(norms).sum(dtype=torch.float64).to(loss.device)
        self.rows.append((state.global_step + 1, torch.stack([loss.to(torch.float64), params])))

    def on_step_end(self, args, state, control, **kwargs):
        due = (control.should_log or control.should_save or control.should_evaluate or control.should_training_stop
               or state.global_step >= state.max_steps
               or any(getattr(cb, "reads_weights_at", lambda s: False)(state)
                      for cb in self.trainer.callback_handler.callbacks))
        if due:
            self.check()

    def check(self) -> None:
        """The one host read: raise if any step so far went non-finite."""
        if not self.rows:
            return
        steps, rows = [step for step, _ in self.rows], torch.stack([row for _, row in self.rows])
        self.rows = []
        finite = rows.isfinite()
        if self.sharded:  # each rank holds other shards and ran another batch: all ranks stop, or none
            finite, = fsdp.all_ranks(finite)
        for step, (loss, _, loss_ok, params_ok) in zip(steps, torch.cat([rows, finite.double()], 1).tolist()):
            if not (loss_ok and params_ok):
                what = ("the loss is not finite" if not loss_ok
                        else "the optimizer step made parameters non-finite")
                self.trainer.stop_non_finite(step, what, loss)


class _RestoreLossState(TrainerCallback):
    """Trainer resets its loss accumulators when training starts; put back the checkpoint's."""

    def __init__(self, trainer: "RatioTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.restore_loss_state()


class RatioTrainer(RatioOptimizerMixin, Trainer):
    """Trainer whose optimizer puts every A factor at η and every B factor at λη (LoRA+/OLoRA+): the public mixin's
    (`oloraplus.train.mixin`), with λ from `ratio=`."""

    def __init__(self, *args, ratio: float = 1.0, response_only: bool = True, **kwargs):
        self.ratio = ratio
        self._staging: Path | None = None
        self._resumed_from: str | None = None
        self._step_loss: torch.Tensor | None = None  # Σ of the current optimizer step's micro-batch losses
        super().__init__(*args, **kwargs)
        # Probed once: a model that ignores a (rows, K) logits_to_keep falls back to its own loss.
        self.response_only = response_only and supports_response_only_loss(self.model)
        self.watch = _NonFiniteWatch(self)
        handler = self.callback_handler.callbacks
        # Right after DefaultFlowCallback (which decides whether this step logs/saves/evaluates) and
        # before every callback that reads the weights.
        flow = next((i for i, cb in enumerate(handler) if isinstance(cb, DefaultFlowCallback)), -1)
        handler.insert(flow + 1, self.watch)
        self.add_callback(_RestoreLossState(self))

    def stop_non_finite(self, step: int, what: str, loss: float) -> None:
        last = checkpoint.last_checkpoint(self.args.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training stopped at step {step}: {what} (loss {loss:.4g}); try a lower --lr or --ratio; {kept}",
            what=what, step=step, loss=loss, last_checkpoint=last,
        )

    def step_loss(self) -> torch.Tensor | None:
        """The summed loss of the optimizer step that just ran (a device scalar), and start the next sum."""
        loss, self._step_loss = self._step_loss, None
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, with the V-wide output head applied only at scored positions (fast_loss)."""
        if (return_outputs or not self.response_only or "labels" not in inputs
                or self.label_smoother is not None or self.compute_loss_func is not None):
            return super().compute_loss(model, model_inputs(inputs), return_outputs, num_items_in_batch)
        count = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = response_only_loss(model, inputs, count)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and count is not None:
            # Trainer.compute_loss's rule: the count is global, DDP averages the gradients, so undo the mean.
            scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # Kept on the device: `_NonFiniteWatch` checks it where the host syncs anyway.
        self._step_loss = loss.detach() if self._step_loss is None else self._step_loss + loss.detach()
        return loss

    def _track_num_input_tokens(self, inputs) -> None:
        """Real (non-padding) tokens, counted by the collator on the host: no device sum and `.item()` per step.

        Padded and packed batches alike; under several processes the counts are gathered as the Trainer does.
        """
        if self.args.include_num_input_tokens_seen == "no" or REAL_TOKENS not in inputs:
            return super()._track_num_input_tokens(inputs)
        tokens = int(inputs[REAL_TOKENS])
        if self.args.world_size > 1:
            counts = self.accelerator.gather(torch.tensor(tokens, device=self.args.device, dtype=torch.int64))
            tokens = int(counts.sum().item())
        self.state.num_input_tokens_seen += tokens

    # --- checkpoints: staged, then renamed into place ---

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        self.watch.check()  # a poisoned checkpoint is never written
        run_dir = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        staging = checkpoint.staging_dir(run_dir, step)
        final = run_dir / checkpoint.checkpoint_name(step)
        main = self.args.should_save
        try:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
            self.accelerator.wait_for_everyone()
            self._staging = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self._save_loss_state(staging / final.name)
            self.accelerator.wait_for_everyone()
            if main:
                checkpoint.publish(staging / final.name, final)
                shutil.rmtree(staging, ignore_errors=True)
        except WRITE_ERRORS as exc:
            shutil.rmtree(staging, ignore_errors=True)
            last = checkpoint.last_checkpoint(run_dir)
            kept = f"the last complete checkpoint {last} is intact" if last else "no earlier checkpoint exists"
            reason = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).splitlines()[0]
            raise checkpoint.CheckpointError(
                f"cannot write the checkpoint of step {step} in {run_dir} (disk full or not writable?): "
                f"{reason}; {kept}"
            ) from exc
        self.accelerator.wait_for_everyone()

    def _save_loss_state(self, directory: Path) -> None:
        """Trainer's running loss sums (not in trainer_state.json), so `train_loss` survives a resume."""
        state = {
            "total_loss": self._total_loss_scalar,
            "pending_loss": self._tr_loss.item(),
            "last_logged_step": self._globalstep_last_logged,
        }
        directory.mkdir(parents=True, exist_ok=True)
        (directory / LOSS_STATE.format(rank=self.args.process_index)).write_text(json.dumps(state))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._resumed_from = resume_from_checkpoint

    def restore_loss_state(self) -> None:
        if self._resumed_from is None:
            return
        path = Path(self._resumed_from) / LOSS_STATE.format(rank=self.args.process_index)
        self._resumed_from = None
        if not path.is_file():  # a checkpoint from another world size: the loss covers only this session
            return
        state = json.loads(path.read_text())
        self._total_loss_scalar = float(state["total_loss"])
        self._tr_loss.fill_(float(state["pending_loss"]))
        self._globalstep_last_logged = int(state["last_logged_step"])
        self._initial_global_step = 0  # the mean train loss covers every step, before and after the resume
