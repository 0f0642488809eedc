"""`--device`: the GPU when there is one, an explicit choice otherwise, one-line errors for the impossible."""

from __future__ import annotations

import pytest
import torch

from oloraplus import models
from oloraplus.errors import ModelError


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.pick_device(None) == torch.device("cpu")
    assert models.pick_device("auto") == torch.device("cpu")


def test_auto_is_this_ranks_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models.pick_device("auto") == torch.device("cuda", 1)
    monkeypatch.delenv("LOCAL_RANK")
    assert models.pick_device(None) == torch.device("cuda", 0)


def test_explicit_cpu_and_refusals(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ModelError, match="CUDA is not available"):
        models.pick_device("cuda")
    with pytest.raises(ModelError, match="not a device"):
        models.pick_device("gpu0")


def test_bf16_only_on_cuda(monkeypatch):
    assert models.default_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert models.default_dtype(torch.device("cuda", 0)) == torch.bfloat16


def test_load_model_puts_the_model_on_the_device(tiny_llama_dir):
    loaded = models.load_model(str(tiny_llama_dir), device="cpu")
    assert next(loaded.model.parameters()).device == torch.device("cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32
