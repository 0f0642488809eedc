"""Plain text (continued pretraining): every token trained, documents packed into --max-length rows; through the
CLI on a tiny model, eval loss and the report work and generation metrics are refused."""

from __future__ import annotations

import json

import pytest

from oloraplus.cli.main import main
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.example import Document
from oloraplus.data.plaintext import encode_documents
from oloraplus.eval.loss import evaluate_loss

DOCS = [Document("The quick brown fox."), Document("Return the sum of a list of numbers."), Document("42")]


def test_documents_end_with_eos_and_are_cut_into_rows(plain_tok):
    ds, stats = encode_documents(DOCS, plain_tok.hf, max_length=8)
    eos = plain_tok.hf.eos_token_id
    stream = [t for d in DOCS for t in [1] + plain_tok.core.encode(d.text).ids + [eos]]  # BOS as the tokenizer adds
    assert [t for row in ds["input_ids"] for t in row] == stream
    assert all(len(row) == 8 for row in ds["input_ids"][:-1]) and 0 < len(ds["input_ids"][-1]) <= 8
    assert ds["labels"] == ds["input_ids"]  # loss on every token
    assert ds["length"] == [len(r) for r in ds["input_ids"]]
    assert (stats.total, stats.truncated, stats.dropped) == (3, 0, 0)


def test_collated_rows_score_every_token_but_each_rows_first(plain_tok):
    ds, _ = encode_documents(DOCS, plain_tok.hf, max_length=8)
    batch = CausalLMCollator(pad_token_id=0)([ds[i] for i in range(len(ds))])
    assert batch["scored"]["count"] == sum(len(r) - 1 for r in ds["input_ids"])


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    words = ["alpha", "beta", "gamma", "delta"]
    text = "\n\n".join(" ".join(words[(i + k) % 4] for k in range(6 + i % 5)) for i in range(40))
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


ARGS = ["--rank", "4", "--alpha", "8", "--max-steps", "2", "--batch-size", "2", "--max-length", "32",
        "--train-size", "30", "--eval-size", "10", "--logging-steps", "1", "--method", "lora"]


def test_train_eval_and_report_on_a_txt_file(tiny_llama_dir, text_file, tmp_path, capsys, one_thread):
    sweep = tmp_path / "sweep"
    out = sweep / "runs" / "text"
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(text_file), *ARGS, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data: 40 plain-text documents (continued pretraining: loss on every token, packed into rows of 32 " \
           "tokens); train " in printed and "rows from 30 documents; eval " in printed
    assert "from 10 documents" in printed and "2 steps" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["plain_text"] is True and metrics["train_documents"] == 30 and metrics["eval_examples"] > 0
    rows = metrics["eval_examples"]  # all 32 tokens long but the last; each scores all its tokens but the first
    assert metrics["eval_loss"] > 0 and (rows - 1) * 31 < metrics["eval_tokens"] <= rows * 31
    assert main(["eval", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["eval_loss"] == pytest.approx(metrics["eval_loss"], abs=1e-5)
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report.md").is_file()


def test_generation_metrics_are_refused_for_plain_text(tiny_llama_dir, text_file, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["train", "--model", str(tiny_llama_dir), "--data", str(text_file), *ARGS, "--eval-generate", "4",
                 "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"oloraplus: error: --eval-generate: {text_file} is plain text (continued "
                                 "pretraining): it has no prompts or reference replies to generate and score; use "
                                 "the eval loss and perplexity")
    assert not out.exists() and not out.with_name("gen.partial").exists()


def test_eval_loss_of_rows_matches_a_direct_forward(tiny_llama_dir, plain_tok, one_thread):
    """The packed rows' eval loss is the model's own mean cross-entropy over the same tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ds, _ = encode_documents(DOCS * 3, tok, max_length=16)
    got = evaluate_loss(model, ds, CausalLMCollator(pad_token_id=tok.pad_token_id), batch_size=2)
    total = count = 0.0
    with torch.no_grad():
        for row in ds["input_ids"]:
            ids = torch.tensor([row])
            loss = model(input_ids=ids, labels=ids).loss
            total += loss.item() * (len(row) - 1)
            count += len(row) - 1
    assert got["eval_loss"] == pytest.approx(total / count, rel=1e-5)
