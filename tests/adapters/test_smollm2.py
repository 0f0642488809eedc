"""OLoRA on the real SmolLM2-135M (576-wide, 30 layers): the init must leave the logits unchanged."""

import pytest
import torch

from oloraplus.adapters.build import AdapterSpec, attach_adapter


@pytest.mark.smollm2
def test_olora_init_keeps_smollm2_logits(smollm2_dir):
    from oloraplus.models import load_model

    model = load_model(str(smollm2_dir), dtype=torch.float32).model.eval()
    tokens = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(tokens).logits
        peft_model, initial = attach_adapter(model, AdapterSpec("olora", rank=32, alpha=16))
        logits = peft_model(tokens).logits
    assert len(initial) == 30 * 7
    scale = reference.abs().max()  # fp32 rounding of W − s·B·A over 30 layers: compare relative to the logits
    torch.testing.assert_close(logits / scale, reference / scale, rtol=0, atol=1e-5)
