import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from oloraplus.adapters.targets import default_target_modules, resolve_target_modules
from oloraplus.errors import AdapterError

EXPECTED = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gpt2": {"c_attn", "c_proj", "c_fc"},
    "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
}
BLOCKS = {"llama": "model.layers.", "qwen2": "model.layers.", "gemma": "model.layers.",
          "gpt2": "transformer.h.", "opt": "model.decoder.layers."}


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_default_targets_are_the_block_linears(arch, make_model):
    model = make_model(arch)
    targets = default_target_modules(model)
    assert len(targets) == len(set(targets))
    assert set(targets) == EXPECTED[arch]
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=targets, fan_in_fan_out=arch == "gpt2"))
    names = [n for n, m in wrapped.base_model.model.named_modules() if isinstance(m, LoraLayer)]
    per_block = 4 if arch == "gpt2" else len(EXPECTED[arch])  # gpt2 has two c_proj per block
    assert len(names) == 2 * per_block
    assert all(n.startswith(BLOCKS[arch]) for n in names)  # never lm_head, embeddings or OPT's project_in/out


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.proj = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList([_Block(), _Block()])
        self.proj = nn.Linear(8, 8)  # same leaf name as attn.proj, outside the blocks


def test_suffixes_are_lengthened_to_exclude_outside_modules():
    # "proj" would also select the top-level proj; "0" would select the whole block layers.0
    assert default_target_modules(_Toy()) == ["attn.proj", "mlp.0", "mlp.2"]


def test_no_blocks_is_an_adapter_error():
    with pytest.raises(AdapterError, match="cannot find the transformer blocks"):
        default_target_modules(nn.Sequential(nn.Linear(4, 4)))


def test_resolve_accepts_valid_and_defaults(make_model):
    model = make_model("llama")
    assert resolve_target_modules(model, None) == default_target_modules(model)
    assert resolve_target_modules(model, ["q_proj", " v_proj", "q_proj"]) == ["q_proj", "v_proj"]


def test_resolve_rejects_unknown_name_with_choices(make_model):
    model = make_model("gpt2")
    with pytest.raises(AdapterError, match=r"--target-modules: 'foo' matches no linear layer; available: c_attn"):
        resolve_target_modules(model, ["c_attn", "foo"])


def test_resolve_rejects_non_linear_module(make_model):
    with pytest.raises(AdapterError, match="'mlp' matches no linear layer"):
        resolve_target_modules(make_model("llama"), ["mlp"])
    with pytest.raises(AdapterError, match="empty module name"):
        resolve_target_modules(make_model("llama"), [])


def test_resolve_rejects_name_that_also_selects_a_block():
    with pytest.raises(AdapterError, match="'0' also matches 'layers.0', which is not a linear layer"):
        resolve_target_modules(_Toy(), ["0"])
