"""Data as users have it: content parts, loss_weight, OpenAI tool_calls, plain text, preference/KTO refusals,
placeholders."""

from __future__ import annotations

import json
import re
import time

import pytest

from oloraplus.data.example import Document, Example
from oloraplus.data.formats import load_examples
from oloraplus.data.placeholders import HANDFUL, placeholder_replies, placeholder_warning
from oloraplus.errors import DataError


def write(tmp_path, name: str, records) -> str:
    path = tmp_path / name
    path.write_text(records if isinstance(records, str) else json.dumps(records), encoding="utf-8")
    return str(path)


def message(role: str, content, **extra) -> dict:
    return {"role": role, "content": content, **extra}


def test_content_parts_text_and_value_keys_are_joined(tmp_path):
    src = write(tmp_path, "parts.json", [{"messages": [
        message("user", [{"type": "text", "text": "Add "}, {"type": "text", "text": "2 and 3."}]),
        message("assistant", [{"type": "text", "value": "5"}])]}])
    assert load_examples(src) == [Example((("user", "Add 2 and 3."), ("assistant", "5")))]


@pytest.mark.parametrize("kind", ["image_url", "image", "input_audio", "video"])
def test_non_text_part_is_one_line_naming_record_and_type(tmp_path, kind):
    src = write(tmp_path, "mm.json", [{"messages": [message("user", "hi"), message("assistant", "ok")]},
                                      {"messages": [message("user", [{"type": "text", "text": "What is this?"},
                                                                      {"type": kind, kind: "x.png"}]),
                                                    message("assistant", "A cat.")]}])
    with pytest.raises(DataError) as info:
        load_examples(src)
    assert str(info.value) == (f"{src}: record 1 (0-based): messages[0]: field 'content'[1]: part type '{kind}' is "
                               "not text: multimodal data is not supported (only text parts can be trained)")


def test_loss_weight_marks_context_turns_and_rejects_other_values(tmp_path):
    src = write(tmp_path, "lw.json", [{"messages": [
        message("user", "a"), message("assistant", "b", loss_weight=0.0), message("user", "c"),
        message("assistant", "d", loss_weight=1)]}])
    assert load_examples(src)[0].no_loss == {1}
    bad = write(tmp_path, "lw2.json", [{"messages": [message("user", "a"), message("assistant", "b", loss_weight=0.5)]}])
    with pytest.raises(DataError, match=r"record 0 \(0-based\): messages\[1\]: field 'loss_weight': expected 0 or 1"):
        load_examples(bad)


def test_openai_tool_calls_become_a_tool_call_turn(tmp_path):
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 2}}}
    src = write(tmp_path, "oa.json", [{"messages": [
        message("user", "2+?"), message("assistant", None, tool_calls=[call]), message("tool", "4"),
        message("assistant", "4")]}])
    example = load_examples(src)[0]
    assert example.tool_calls == {1} and json.loads(example.messages[1][1]) == {"name": "add", "arguments": {"a": 2}}


def test_plain_text_records_and_txt_files_are_documents(tmp_path):
    assert load_examples(write(tmp_path, "t.jsonl", '{"text": "one"}\n{"text": "two"}\n')) == [
        Document("one"), Document("two")]
    txt = write(tmp_path, "book.txt", "First paragraph,\nsecond line.\n\n\nSecond paragraph.\n  \nThird.\n")
    assert load_examples(txt) == [Document("First paragraph,\nsecond line."), Document("Second paragraph."),
                                  Document("Third.")]
    with pytest.raises(DataError, match="the data set is empty"):
        load_examples(write(tmp_path, "blank.txt", "\n \n"))


PREFERENCE = {
    "dpo-alpaca": ({"instruction": "q", "input": "", "chosen": "good", "rejected": "bad"}, "preference data"),
    "dpo-sharegpt": ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "a"},
                      "rejected": {"from": "gpt", "value": "b"}}, "preference data"),
    "dpo-trl": ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference data"),
    "kto-messages": ({"messages": [message("user", "q"), message("assistant", "bad")], "label": False}, "KTO data"),
    "kto-trl": ({"prompt": "q", "completion": "a", "label": True}, "KTO data"),
    "kto-tag": ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                 "kto_tag": False}, "KTO data"),
}


@pytest.mark.parametrize("case", list(PREFERENCE), ids=list(PREFERENCE))
def test_preference_and_kto_files_are_refused_by_name_in_under_a_second(tmp_path, case):
    record, kind = PREFERENCE[case]
    src = write(tmp_path, "pref.json", [record] * 2000)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_examples(src)
    assert time.perf_counter() - start < 1.0  # a bound, not a benchmark: the first record decides
    message_ = str(info.value)
    assert message_.startswith(f"{src}: record 0 (0-based): this is {kind}") and "SFT cannot use it" in message_
    assert "\n" not in message_


def test_a_kto_record_after_sft_records_is_refused_too(tmp_path):
    ok = {"messages": [message("user", "q"), message("assistant", "a")]}
    src = write(tmp_path, "mixed.json", [ok, ok, {**ok, "label": False}])
    with pytest.raises(DataError, match=r"record 2 \(0-based\): this is KTO data \(a true/false 'label'"):
        load_examples(src)


def test_a_non_boolean_label_is_not_kto(tmp_path):
    src = write(tmp_path, "cls.json", [{"instruction": "i", "output": "o", "label": 3}])
    assert load_examples(src)[0].response == "o"


def test_placeholders_counted_in_trained_replies_and_warned_above_a_handful():
    filled = Example((("user", "Hi {{name}}"), ("assistant", "Hello!")))  # in a prompt: not trained, not counted
    slot = Example((("user", "Hi"), ("assistant", "Dear {{ customer_name }}, thanks.")))
    masked = Example((("user", "a"), ("assistant", "{{x}}"), ("user", "b"), ("assistant", "c")),
                     no_loss=frozenset({1}))
    assert placeholder_replies([filled, masked], "all") == (0, None)
    count, first = placeholder_replies([filled] + [slot] * HANDFUL, "all")
    assert (count, first) == (HANDFUL, "'{{ customer_name }}' in record 1 (0-based)")
    assert placeholder_warning(count, first) is None
    count, first = placeholder_replies([slot] * (HANDFUL + 2), "all")
    warning = placeholder_warning(count, first)
    assert re.fullmatch(r"warning: 7 trained replies contain template placeholders such as '\{\{ customer_name \}\}' "
                        r"in record 0 \(0-based\); they will be trained literally: fill them in or drop those records",
                        warning)


def test_data_help_names_every_format():
    import dataclasses

    from oloraplus.config import TrainConfig
    from oloraplus.data.formats import FORMATS

    help_text = next(f for f in dataclasses.fields(TrainConfig) if f.name == "data").metadata["help"]
    normalized = help_text.lower().replace("-", " ")
    assert all(name in normalized for name in FORMATS), (list(FORMATS), help_text)
    assert ".txt" in help_text and "builtin:stdlib" in help_text and "Preference/KTO" in help_text


def test_placeholder_warning_is_printed_before_the_model_loads(tmp_path, tiny_llama_dir, capsys):
    from oloraplus.config import TrainConfig
    from oloraplus.data.prepare import prepare

    records = [{"instruction": f"Greet {i}.", "output": "Hello {{name}}!"} for i in range(HANDFUL + 1)]
    cfg = TrainConfig(model=str(tiny_llama_dir), data=write(tmp_path, "slots.json", records), max_length=64,
                      train_size=4, eval_size=2)
    prep = prepare(cfg)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("warning: 6 trained replies contain template placeholders such as '{{name}}' in record 0 "
                      "(0-based); they will be trained literally: fill them in or drop those records")
    assert out[1].startswith("loading ") and prep.data_stats["placeholder_replies"] == HANDFUL + 1
    prepare(cfg, training=False)  # `oloraplus eval` scores such data without the training warning
    assert "warning" not in capsys.readouterr().out
