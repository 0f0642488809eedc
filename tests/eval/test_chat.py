"""`oloraplus generate RUN_DIR` on a tiny Llama run: the same text as batched greedy decoding."""

import json

import pytest

from oloraplus import models
from oloraplus.adapters.export import load_adapter
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.errors import DataError
from oloraplus.eval.chat import Sampling, chat_prompt, generate_replies, read_prompts
from oloraplus.eval.generate import generate_batched
from oloraplus.train.recipe import train

PROMPTS = ["Explain what the function does.", "Return the sum of a list of numbers."]
MAX_NEW = "10"


@pytest.fixture(scope="module")
def run_dir(tiny_llama_dir, alpaca_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, alpha=8, lr=3e-2,
                      max_steps=6, batch_size=4, max_length=64, train_size=40, eval_size=4))
    return out


def _reference(model_dir, run_dir=None) -> list[str]:
    """Independent path: load the model by hand, render with chat_prompt, decode with generate_batched."""
    loaded = models.load_model(str(model_dir), device="cpu")
    model = loaded.model if run_dir is None else load_adapter(loaded.model, run_dir / "adapter")
    prompts = [chat_prompt(loaded.tokenizer, p) for p in PROMPTS]
    return generate_batched(model, loaded.tokenizer, prompts, max_new_tokens=int(MAX_NEW))


def test_streamed_greedy_reply_equals_batched_generation(run_dir, tiny_llama_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", PROMPTS[0], "--max-new-tokens", MAX_NEW]) == 0
    assert capsys.readouterr().out.strip() == _reference(tiny_llama_dir, run_dir)[0]


def test_prompt_file_and_base_only(run_dir, tiny_llama_dir, tmp_path, capsys):
    lines = tmp_path / "prompts.txt"
    lines.write_text("\n".join(PROMPTS) + "\n\n")
    assert main(["generate", str(run_dir), "--prompts", str(lines), "--max-new-tokens", MAX_NEW]) == 0
    tuned = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in tuned] == PROMPTS
    assert [r["response"] for r in tuned] == _reference(tiny_llama_dir, run_dir)

    records = tmp_path / "prompts.jsonl"
    records.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    assert main(["generate", str(run_dir), "--prompts", str(records), "--max-new-tokens", MAX_NEW, "--base-only"]) == 0
    base = [json.loads(line)["response"] for line in capsys.readouterr().out.splitlines()]
    assert base == _reference(tiny_llama_dir)
    assert base != [r["response"] for r in tuned]  # the adapter (lr 3e-2) changed what the model says


def test_sampling_is_reproducible_with_a_seed(run_dir):
    from oloraplus.eval.chat import load_for_generation

    model, tokenizer = load_for_generation(run_dir, device="cpu")
    sampling = Sampling(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    first = generate_replies(model, tokenizer, PROMPTS, sampling)
    assert generate_replies(model, tokenizer, PROMPTS, sampling) == first
    many = {generate_replies(model, tokenizer, PROMPTS[:1], Sampling(12, 1.5, 1.0, seed))[0] for seed in range(6)}
    assert len(many) > 1  # it does sample


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "ok"}\nnot json\n', "{path}: line 2: invalid JSON: Expecting value"),
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', "{path}: line 2: field 'prompt': expected a non-empty string"),
    ("\n\n", "--prompts {path}: no prompts (empty file)"),
])
def test_bad_prompt_files_are_one_line_data_errors(tmp_path, capsys, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        read_prompts(path)
    assert str(info.value) == message.format(path=path)  # the whole message: one line, naming file and line
    # through the CLI: exit 2, that line alone on stderr, before any model is loaded (the run dir is not one)
    assert main(["generate", str(tmp_path), "--prompts", str(path)]) == 2
    assert capsys.readouterr().err == f"oloraplus: error: {message.format(path=path)}\n"


@pytest.mark.parametrize("extra, match", [
    ([], "exactly one of --prompt"),
    (["--prompt", "a", "--prompts", "f.txt"], "exactly one of --prompt"),
    (["--prompt", "a", "--temperature", "-1"], "--temperature"),
    (["--prompt", "a", "--top-p", "0"], "--top-p"),
    (["--prompt", "a", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompts", "missing.txt"], "cannot read"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, extra, match):
    assert main(["generate", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_generate_in_a_non_run_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "not an oloraplus run" in capsys.readouterr().err


def test_reference_replies_are_not_empty(run_dir, tiny_llama_dir):
    """Guards the equality tests above against comparing two empty strings (the random base itself
    ends its reply at once, which is why `--base-only` is also checked to differ from the adapter)."""
    assert all(_reference(tiny_llama_dir, run_dir))
