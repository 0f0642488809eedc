"""`transformers.Trainer` with the λ optimizer: the loop, accumulation, schedulers, DDP and logging stay HF's.

Three additions make long runs safe: checkpoints are staged and renamed into place (see
`oloraplus.train.checkpoint`), the loss accumulators travel with each checkpoint so a resumed run
reports what an uninterrupted one would, and a non-finite loss or parameter stops the run before
a poisoned checkpoint can be written.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import Trainer, TrainerCallback

from oloraplus.errors import NonFiniteLossError
from oloraplus.optim.ratio import ratio_param_groups
from oloraplus.train import checkpoint
from oloraplus.train.fast_loss import response_only_loss, supports_response_only_loss

LOSS_STATE = "oloraplus_loss_state-{rank}.json"  # per process: each one accumulates its own pending loss
# What a failed checkpoint write raises: OSError from Python and fsync, RuntimeError from torch.save
# ("PytorchStreamWriter failed writing file" on a full disk), SafetensorError from safetensors.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class _FiniteParameters(TrainerCallback):
    """After every optimizer step: a NaN/inf weight stops the run before any callback or checkpoint sees it."""

    def __init__(self, trainer: "RatioTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.model.parameters() if p.requires_grad]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            self.trainer.stop_non_finite(state.global_step + 1, "the optimizer step made parameters non-finite")


class _RestoreLossState(TrainerCallback):
    """Trainer resets its loss accumulators when training starts; put back the checkpoint's."""

    def __init__(self, trainer: "RatioTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.restore_loss_state()


class RatioTrainer(Trainer):
    """Trainer whose optimizer puts every A factor at η and every B factor at λη (LoRA+/OLoRA+)."""

    def __init__(self, *args, ratio: float = 1.0, response_only: bool = True, **kwargs):
        self.ratio = ratio
        self._staging: Path | None = None
        self._resumed_from: str | None = None
        self._last_loss = math.nan  # of the latest micro-batch, reported when training diverges
        super().__init__(*args, **kwargs)
        # Probed once: a model that ignores a boolean logits_to_keep falls back to its own loss.
        self.response_only = response_only and supports_response_only_loss(self.model)
        self.add_callback(_FiniteParameters(self))
        self.add_callback(_RestoreLossState(self))

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups, _ = ratio_param_groups(opt_model, self.args.learning_rate, self.ratio, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def stop_non_finite(self, step: int, what: str) -> None:
        last = checkpoint.last_checkpoint(self.args.output_dir)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise NonFiniteLossError(
            f"training stopped at step {step}: {what} (loss {self._last_loss:.4g}); try a lower --lr or --ratio; "
            f"{kept}",
            what=what, step=step, loss=self._last_loss, last_checkpoint=last,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, with the V-wide output head applied only at scored positions (fast_loss)."""
        if (return_outputs or not self.response_only or "labels" not in inputs
                or self.label_smoother is not None or self.compute_loss_func is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        count = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = response_only_loss(model, inputs, count)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and count is not None:
            # Trainer.compute_loss's rule: the count is global, DDP averages the gradients, so undo the mean.
            scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._last_loss = loss.item()
        if not math.isfinite(self._last_loss):
            self.stop_non_finite(self.state.global_step + 1, "the loss is not finite")
        return loss

    # --- checkpoints: staged, then renamed into place ---

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
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
