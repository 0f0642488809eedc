"""`oloraplus merge`: fold a run's (or any PEFT LoRA directory's) adapter into the base weights; a plain HF model."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from oloraplus import rundir
from oloraplus.adapters.adapter_dir import adapter_source, check_base
from oloraplus.io import follow_umask


def merge_run(run_dir: str | Path, output: str | Path, model: str | None = None) -> Path:
    """Base + adapter → merged safetensors model (+ tokenizer) at `output`, written atomically.

    `model`: `--model`, the base to load instead of the one the run or adapter records."""
    output = rundir.check_output_dir(output, what="merged model")
    source = adapter_source(run_dir, model)  # both checked before torch and the model load
    cfg = rundir.load_run_config(source.run_dir) if source.run_dir is not None else None
    trust = cfg is not None and cfg.trust_remote_code
    if cfg is not None and cfg.quantize != "none":  # it recorded the quantized base's fingerprint: shapes only
        source = dataclasses.replace(source, fingerprint=None)

    from oloraplus import models
    from oloraplus.adapters.export import load_adapter

    loaded = models.load_model(source.base_model, trust_remote_code=trust, device="cpu")
    check_base(loaded.model, source, models.base_fingerprint(loaded.model))
    merged = load_adapter(loaded.model, source.path).merge_and_unload()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=output.name + ".tmp-", dir=output.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        follow_umask(tmp)
        if output.exists():
            output.rmdir()
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output
