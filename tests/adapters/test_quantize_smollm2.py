"""--quantize nf4 on the real SmolLM2-135M: a few OLoRA steps train, the re-quantization error is recorded and the
saved adapter reproduces the trained logits on the same nf4 base."""

import pytest
import torch

from tests.conftest import requires_smollm2

pytest.importorskip("bitsandbytes")


@pytest.mark.smollm2
@requires_smollm2
def test_olora_trains_on_an_nf4_smollm2_and_reloads_exactly(tmp_path, one_thread):
    from oloraplus.adapters.export import load_adapter
    from oloraplus.config import TrainConfig
    from oloraplus.models import load_model
    from oloraplus.train.recipe import train

    cfg = TrainConfig(data="builtin:stdlib", output=str(tmp_path / "run"), method="olora", quantize="nf4", max_steps=3,
                      batch_size=2, max_length=128, train_size=6, eval_size=8, logging_steps=1)
    result = train(cfg)
    metrics = result.metrics
    assert metrics["requant_layers"] == 30 * 7
    assert 0.05 < metrics["requant_error_mean"] <= metrics["requant_error_max"] < 0.2  # NF4 of 576-wide layers
    tokens = torch.randint(0, 49152, (1, 24), generator=torch.Generator().manual_seed(0))
    result.model.eval()
    with torch.no_grad():
        trained = result.model(tokens).logits
        reloaded = load_adapter(load_model("smollm2-135m", device="cpu", quantize="nf4").model,
                                tmp_path / "run" / "adapter")(tokens).logits
    scale = trained.abs().max()
    torch.testing.assert_close(reloaded / scale, trained / scale, rtol=0, atol=1e-5)
