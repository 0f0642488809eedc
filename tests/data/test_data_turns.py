"""Which tokens carry loss: every assistant turn (tool calls too), checked token by token against the raw
tokenizer encoding hand-written segments (an independent reference for `data.turns` + `data.tokenize`)."""

from __future__ import annotations

import json

import torch
from data_helpers import CHATML, make_tokenizer

from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.example import Example
from oloraplus.data.formats import load_examples
from oloraplus.data.prompts import render_prompt
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.data.turns import segments

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
MULTI = Example((("user", "2+3?"), ("assistant", "Let me add."), ("user", "Go on."), ("assistant", "It is 5.")))
CALL = '{"name": "add", "arguments": {"a": 2, "b": 3}}'
# ChatML that renders OpenAI-style tool_calls, as Qwen2.5's and Hermes' templates do
TOOL_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function.name }}({{ c.function.arguments | tojson }})</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# a template that shows only the last assistant reply in full (as reasoning templates strip old thoughts)
REWRITING = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}…"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def expected(core, parts: list[tuple[str, bool]], bos: bool = False) -> tuple[list[int], list[int]]:
    """input_ids and labels from (text, trained) parts, each encoded alone by the raw tokenizer."""
    ids, labels = ([1], [IGNORE_INDEX]) if bos else ([], [])
    for text, trained in parts:
        tokens = core.encode(text).ids
        ids += tokens
        labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
    return ids, labels


def trained_text(tok, row) -> str:
    return tok.decode([t for t in row["labels"] if t != IGNORE_INDEX])


def test_chat_every_assistant_turn_carries_loss(chat_tok):
    ds, stats = encode_examples([MULTI], chat_tok.hf, max_length=512)
    ids, labels = expected(chat_tok.core, [
        ("<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n", False), ("Let me add.<|im_end|>", True),
        ("\n<|im_start|>user\nGo on.<|im_end|>\n<|im_start|>assistant\n", False), ("It is 5.<|im_end|>", True)])
    assert (ds[0]["input_ids"], ds[0]["labels"]) == (ids, labels)
    assert trained_text(chat_tok.hf, ds[0]) == "Let me add.<|im_end|>It is 5.<|im_end|>"
    assert (stats.truncated, stats.dropped, stats.turns_lost, stats.last_turn_only) == (0, 0, 0, 0)


def test_last_keeps_only_the_final_reply_on_the_same_tokens(chat_tok):
    every, _ = encode_examples([MULTI], chat_tok.hf, max_length=512)
    last, _ = encode_examples([MULTI], chat_tok.hf, max_length=512, train_turns="last")
    assert last[0]["input_ids"] == every[0]["input_ids"]
    assert trained_text(chat_tok.hf, last[0]) == "It is 5.<|im_end|>"
    prompt = chat_tok.core.encode(render_prompt(chat_tok.hf, MULTI)).ids  # the old rule: all before it is context
    assert last[0]["labels"][:len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_without_template_every_turn_in_alpaca_blocks(plain_tok):
    ds, _ = encode_examples([MULTI], plain_tok.hf, max_length=512)
    ids, labels = expected(plain_tok.core, [
        (HEADER + "### User:\n2+3?\n\n### Assistant:\n", False), ("Let me add.</s>", True),
        ("\n\n### User:\nGo on.\n\n### Assistant:\n", False), ("It is 5.</s>", True)], bos=True)
    assert (ds[0]["input_ids"], ds[0]["labels"]) == (ids, labels)
    # generation sees the same prompt the last turn was trained after
    assert render_prompt(plain_tok.hf, MULTI) == (HEADER + "### User:\n2+3?\n\n### Assistant:\nLet me add.</s>\n\n"
                                                  "### User:\nGo on.\n\n### Assistant:\n")


def glaive_record(tmp_path) -> Example:
    path = tmp_path / "glaive.json"
    path.write_text(json.dumps([{"tools": '[{"name": "add"}]', "conversations": [
        {"from": "human", "value": "2+3?"},
        {"from": "function_call", "value": CALL},
        {"from": "observation", "value": '{"sum": 5}'},
        {"from": "gpt", "value": "It is 5."}]}]))
    return load_examples(str(path))[0]


def test_sharegpt_tool_call_is_trained_as_plain_tool_call_text_and_the_result_is_masked(chat_tok, tmp_path):
    example = glaive_record(tmp_path)
    assert example.tool_calls == {2} and example.messages[3] == ("tool", '{"sum": 5}')
    ds, _ = encode_examples([example], chat_tok.hf, max_length=512)
    ids, labels = expected(chat_tok.core, [
        ('<|im_start|>system\nYou can call these tools:\n[{"name": "add"}]<|im_end|>\n'
         "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n", False),
        (f"<tool_call>\n{CALL}\n</tool_call><|im_end|>", True),
        ('\n<|im_start|>tool\n{"sum": 5}<|im_end|>\n<|im_start|>assistant\n', False),
        ("It is 5.<|im_end|>", True)])
    assert (ds[0]["input_ids"], ds[0]["labels"]) == (ids, labels)
    assert '{"sum": 5}' not in trained_text(chat_tok.hf, ds[0])


def test_tool_call_in_the_templates_own_format_when_it_has_one(tmp_path):
    tok = make_tokenizer(TOOL_CHATML)
    ds, _ = encode_examples([glaive_record(tmp_path)], tok.hf, max_length=512)
    assert trained_text(tok.hf, ds[0]) == ('<tool_call>add({"a": 2, "b": 3})</tool_call><|im_end|>\n'
                                           "It is 5.<|im_end|>")
    full = tok.hf.apply_chat_template([{"role": "system", "content": 'You can call these tools:\n[{"name": "add"}]'},
                                       {"role": "user", "content": "2+3?"},
                                       {"role": "assistant", "content": "", "tool_calls": [
                                           {"type": "function", "function": {"name": "add",
                                                                             "arguments": {"a": 2, "b": 3}}}]},
                                       {"role": "tool", "content": '{"sum": 5}'}],
                                      add_generation_prompt=True, tokenize=False)
    assert tok.hf.decode(ds[0]["input_ids"]).startswith(full)  # what the template writes, token for token


def test_loss_weight_zero_masks_its_turn(chat_tok):
    example = Example(MULTI.messages, no_loss=frozenset({1}))
    ds, _ = encode_examples([example], chat_tok.hf, max_length=512)
    assert trained_text(chat_tok.hf, ds[0]) == "It is 5.<|im_end|>"
    silent = Example(MULTI.messages, no_loss=frozenset({1, 3}))
    ds, stats = encode_examples([example, silent], chat_tok.hf, max_length=512)
    assert (len(ds), stats.dropped) == (1, 1)  # nothing to learn from: not used, and counted


def test_cut_inside_a_turn_keeps_what_remains_and_counts_lost_turns(chat_tok):
    full, _ = encode_examples([MULTI], chat_tok.hf, max_length=512)
    first_reply_end = full[0]["labels"].index(IGNORE_INDEX, full[0]["labels"].index(next(
        t for t in full[0]["labels"] if t != IGNORE_INDEX)))
    for cut, lost in ((first_reply_end - 2, 1), (first_reply_end + 3, 1), (len(full[0]["input_ids"]) - 2, 0)):
        ds, stats = encode_examples([MULTI], chat_tok.hf, max_length=cut)
        assert ds[0]["input_ids"] == full[0]["input_ids"][:cut]
        assert ds[0]["labels"] == full[0]["labels"][:cut]  # the loss stays on every token that remains
        assert (stats.truncated, stats.dropped, stats.turns_lost) == (1, 0, lost), cut


def test_template_that_rewrites_earlier_turns_falls_back_to_the_last_reply():
    tok = make_tokenizer(REWRITING)
    seg = segments(tok.hf, MULTI)
    assert not seg.turn_by_turn
    ds, stats = encode_examples([MULTI], tok.hf, max_length=512)
    assert stats.last_turn_only == 1
    assert trained_text(tok.hf, ds[0]) == "It is 5.<|im_end|>"
    assert tok.hf.decode(ds[0]["input_ids"]) == render_prompt(tok.hf, MULTI) + "It is 5.<|im_end|>"


def test_packing_keeps_every_trained_token_of_multi_turn_rows(chat_tok):
    other = Example((("user", "Say hi."), ("assistant", "hi")))
    ds, _ = encode_examples([MULTI, other, MULTI], chat_tok.hf, max_length=512)
    items = [ds[i] for i in range(len(ds))]
    padded = CausalLMCollator(pad_token_id=0)(items)
    packed = CausalLMCollator(pad_token_id=0, packing=True, pack_length=512)(items)
    assert packed["input_ids"].shape[0] == 1
    targets = [sorted(b["scored"]["targets"][b["scored"]["targets"] != IGNORE_INDEX].tolist()) for b in (padded, packed)]
    assert targets[0] == targets[1] and padded["scored"]["count"] == packed["scored"]["count"]
    assert packed["scored"]["count"] == sum(int((torch.tensor(r["labels"]) != IGNORE_INDEX).sum()) for r in items)


def test_shared_glaive_file_trains_every_function_call(chat_tok):
    """The real demo file: every function_call turn is trained text, no observation is."""
    from test_data_formats import shared

    path = shared("glaive_toolcall_en_demo.json")
    raw = json.loads(path.read_text(encoding="utf-8"))[:60]
    examples = load_examples(str(path))[:60]
    ds, stats = encode_examples(examples, chat_tok.hf, max_length=100_000)
    assert stats.dropped == 0 and stats.last_turn_only == 0
    calls = observations = 0
    for record, row in zip(raw, ds):
        trained = trained_text(chat_tok.hf, row)
        for turn in record["conversations"]:
            if turn["from"] == "function_call":
                calls += 1
                assert f"<tool_call>\n{turn['value'].strip()}\n</tool_call><|im_end|>" in trained
            elif turn["from"] in ("gpt",):
                assert turn["value"] + "<|im_end|>" in trained
            elif turn["from"] == "observation":
                observations += 1
                assert turn["value"] not in trained
    assert calls > 10 and observations > 10
