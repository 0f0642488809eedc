"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class OloraError(Exception):
    """Bad input (file, record, field, flag): the message names what is wrong and where."""


class DataError(OloraError):
    """A data file or record cannot be used."""


class ConfigError(OloraError):
    """A flag or config value is invalid."""


class ModelError(OloraError):
    """A model path or id cannot be loaded."""


class AdapterError(OloraError):
    """An adapter cannot be built, saved, loaded or composed."""


class NonFiniteLossError(OloraError):
    """Training diverged (a NaN/inf loss or weight): the message names the step; earlier checkpoints are kept."""

    same_on_every_rank = True  # the ranks agree on it (one all-reduce), so under torchrun rank 0 alone says it

    def __init__(self, message: str, *, what: str, step: int, loss: float, last_checkpoint: Path | None):
        super().__init__(message)
        self.what = what
        self.step = step
        self.loss = loss
        self.last_checkpoint = last_checkpoint

    def record(self) -> dict:
        """What `failure.json` keeps: enough to decide how to restart without reading the log."""
        return {"error": self.what, "step": self.step, "loss": self.loss, "message": str(self),
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None}


class MissingExtraError(ConfigError, ImportError):
    """An optional extra is not installed: the message names the `pip install "oloraplus[extra]"` that adds it."""

    def __init__(self, feature: str, extra: str):
        super().__init__(f'{feature} needs the {extra} extra: pip install "oloraplus[{extra}]"')
