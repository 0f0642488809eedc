"""`oloraplus merge`: fold a run's adapter into the base weights and write a plain HF model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from oloraplus import rundir
from oloraplus.io import follow_umask


def merge_run(run_dir: str | Path, output: str | Path) -> Path:
    """Base + adapter → merged safetensors model (+ tokenizer) at `output`, written atomically."""
    run_dir = Path(run_dir)
    output = rundir.check_output_dir(output, what="merged model")
    cfg = rundir.load_run_config(run_dir)  # both checked before torch and the model load

    from oloraplus import models
    from oloraplus.adapters.export import load_adapter

    loaded = models.load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, device="cpu")
    merged = load_adapter(loaded.model, run_dir / rundir.ADAPTER_DIR).merge_and_unload()
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
