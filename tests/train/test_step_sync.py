"""The training step is GPU-friendly: no host sync in a step that neither logs nor saves, and the checks that
used to sync every step (finite loss and weights, diagnostics) still do their job on their schedule."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import oloraplus
from oloraplus.config import TrainConfig
from oloraplus.errors import NonFiniteLossError
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.train import recipe
from oloraplus.train.callbacks import DiagnosticsCallback
from oloraplus.train import trainer as trainer_module
from oloraplus.train.trainer import RatioTrainer

SRC = str(Path(oloraplus.__file__).parent)
COLLATE = str(Path(oloraplus.__file__).parent / "data" / "collate.py")  # host tensors by design (before the copy)
# On a GPU each of these makes the host wait for the device (torch.cuda.set_sync_debug_mode reports them).
SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")


def tiny_cfg(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), output=str(out), method="olora", rank=4, alpha=8, lr=3e-3,
                max_steps=6, batch_size=4, max_length=64, train_size=24, eval_size=8, logging_steps=100, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _ours_or_the_trainers(filename: str) -> bool:
    return (filename.startswith(SRC) and filename != COLLATE) or filename.endswith("transformers/trainer.py")


@pytest.fixture
def sync_spy(monkeypatch):
    """Records (method, file, line) of every syncing Tensor call made by oloraplus or the Trainer loop while active."""
    calls: list[tuple[str, str, int]] = []
    active = [False]

    def spy(name, original):
        def wrapper(self, *args, **kwargs):
            if active[0]:
                frame = sys._getframe(1)
                if _ours_or_the_trainers(frame.f_code.co_filename):
                    calls.append((name, frame.f_code.co_filename, frame.f_lineno))
            return original(self, *args, **kwargs)
        return wrapper

    for name in SYNCING:
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    return SimpleNamespace(calls=calls, active=active)


def test_steps_that_neither_log_nor_save_make_no_host_sync(tiny_llama_dir, alpaca_file, tmp_path, monkeypatch,
                                                           sync_spy, one_thread):
    from transformers import TrainerCallback

    windows: list[int] = []

    class Window(TrainerCallback):  # added last: its on_step_end runs after every other callback's
        def on_step_begin(self, args, state, control, **kwargs):
            # step 1 logs (logging_first_step), the last step ends the run: the steps between are plain steps
            sync_spy.active[0] = 1 <= state.global_step < state.max_steps - 1
            if sync_spy.active[0]:
                windows.append(state.global_step + 1)

        def on_step_end(self, args, state, control, **kwargs):
            sync_spy.active[0] = False

    class Spied(RatioTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Window())

    def run(name: str, **kw) -> list:
        sync_spy.calls.clear()
        windows.clear()
        result = recipe.train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / name, diagnostics_steps=-1, **kw))
        assert windows == [2, 3, 4, 5] and result.metrics["steps"] == 6
        return list(sync_spy.calls)

    monkeypatch.setattr(recipe, "RatioTrainer", Spied)
    # The spy sees a sync where there is one: on a CPU the loss takes the exact boolean-mask path, which counts it.
    assert {(name, Path(file).name) for name, file, _ in run("cpu-path")} == {("__int__", "fast_loss.py")}
    # What a GPU runs: the host-computed positions (fast_loss picks them on any non-CPU device).
    monkeypatch.setattr(trainer_module, "response_only_loss", functools.partial(response_only_loss, exact=False))
    for packing in (True, False):
        assert run(f"gpu-path-{packing}", packing=packing) == []


def test_a_nan_between_logging_steps_stops_the_run_at_its_own_step(tiny_llama_dir, alpaca_file, tmp_path,
                                                                   monkeypatch, one_thread):
    compute_loss = RatioTrainer.compute_loss

    def nan_at_step_3(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 2 else loss

    monkeypatch.setattr(RatioTrainer, "compute_loss", nan_at_step_3)
    with pytest.raises(NonFiniteLossError, match="training stopped at step 3: the loss is not finite") as info:
        recipe.train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "run"))  # checked at step 6 only
    assert info.value.step == 3
    work = tmp_path / "run.partial"
    assert json.loads((work / "failure.json").read_text())["step"] == 3
    assert not (work / "adapter").exists() and not (tmp_path / "run").exists()


def test_explicit_diagnostics_schedule():
    """An explicit N runs at step 1, every N steps and the last step, whatever it costs (the automatic,
    cost-driven schedule is tested in tests/train/test_diagnostics_schedule.py)."""
    def steps(every: int, max_steps: int, logging_steps: int = 1) -> list[int]:
        cb = DiagnosticsCallback({}, "unused.jsonl", every=every, logging_steps=logging_steps)
        return [s for s in range(1, max_steps + 1)
                if cb.reads_weights_at(SimpleNamespace(global_step=s, max_steps=max_steps, is_world_process_zero=True))]

    assert steps(7, 20, logging_steps=5) == [1, 7, 14, 20]
    assert steps(4, 6) == [1, 4, 6]


def test_diagnostics_are_logged_on_their_schedule_not_at_every_log(tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    out = tmp_path / "run"
    recipe.train(tiny_cfg(tiny_llama_dir, alpaca_file, out, max_steps=6, logging_steps=1, diagnostics_steps=4))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "diag_subspace_distance" in r] == [1, 4, 6]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    off = tmp_path / "off"
    recipe.train(tiny_cfg(tiny_llama_dir, alpaca_file, off, max_steps=2, diagnostics_steps=-1))
    assert not any("diag_subspace_distance" in line for line in (off / "log.jsonl").read_text().splitlines())


def test_the_watch_names_the_first_bad_step_and_why_from_the_rows_it_kept():
    """Rows kept without a host read: the check reads them in order, first the loss, then the parameters."""
    from oloraplus.train.trainer import _NonFiniteWatch

    param = torch.nn.Parameter(torch.ones(3))
    losses = iter([1.0, 2.0, float("nan"), 3.0])
    stopped: list[tuple] = []
    trainer = SimpleNamespace(model=torch.nn.ParameterList([param]),
                              step_loss=lambda: torch.tensor(next(losses)),
                              stop_non_finite=lambda step, what, loss: stopped.append((step, what, loss)))
    watch = _NonFiniteWatch(trainer)
    watch.on_train_begin(None, None, None)
    for step, poison in enumerate([None, float("inf"), None, None]):
        if poison is not None:
            with torch.no_grad():
                param[0] = poison  # the optimizer step made a parameter non-finite
        watch.on_optimizer_step(None, SimpleNamespace(global_step=step), None)
    assert len(watch.rows) == 4 and not stopped  # nothing read yet
    watch.check()
    assert stopped[0][:2] == (2, "the optimizer step made parameters non-finite") and stopped[0][2] == 2.0
    assert not watch.rows


def test_the_watch_takes_five_ops_per_step_and_no_sync():
    """A step's watch work: foreach norm, stack, fp64 sum, the loss in fp64, the row; and no `.item()`."""
    from oloraplus.train.trainer import _NonFiniteWatch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from opcount import OpCounter

    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(4)]
    trainer = SimpleNamespace(model=torch.nn.ParameterList(params), step_loss=lambda: loss)
    watch = _NonFiniteWatch(trainer)
    watch.on_train_begin(None, None, None)
    loss = torch.tensor(1.5)
    with OpCounter() as counter:
        watch.on_optimizer_step(None, SimpleNamespace(global_step=0), None)
    assert counter.total() == 5 and counter.syncs == 0
