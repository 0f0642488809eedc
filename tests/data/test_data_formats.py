"""load_examples: every format, the shared real files, the hub path, and one-line errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oloraplus.data import formats
from oloraplus.data.formats import Document, Example, load_examples
from oloraplus.errors import DataError

# next to the checkout (/work/main -> /work/shared/data); OLORAPLUS_SHARED_DATA for a worktree elsewhere
SHARED_DATA = Path(os.environ.get("OLORAPLUS_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def write_json(path: Path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_alpaca_json_with_and_without_input(tmp_path):
    src = write_json(tmp_path / "a.json", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
        {"instruction": "Say bye.", "output": "bye"},
    ])
    got = load_examples(src)
    assert got == [
        Example((("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")), input="2 and 3"),
        Example((("user", "Say hi."), ("assistant", "hi"))),
        Example((("user", "Say bye."), ("assistant", "bye"))),
    ]


def test_sharegpt_roles_system_and_tools(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [{
        "system": "Be brief.",
        "tools": [{"name": "add"}],
        "conversations": [
            {"from": "human", "value": "2+3?"},
            {"from": "function_call", "value": '{"name": "add"}'},
            {"from": "observation", "value": "5"},
            {"from": "gpt", "value": "It is 5."},
        ],
    }])
    (ex,) = load_examples(src)
    assert [role for role, _ in ex.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert ex.messages[0][1] == 'Be brief.\n\nYou can call these tools:\n[{"name": "add"}]'
    assert ex.response == "It is 5."


def test_chat_messages_format(tmp_path):
    src = write_json(tmp_path / "m.json", [{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"},
    ]}])
    assert load_examples(src) == [Example((("system", "S"), ("user", "U"), ("assistant", "A")))]


def test_question_answer_jsonl(tmp_path):
    src = write_jsonl(tmp_path / "qa.jsonl", [{"question": "1+1?", "answer": "2\n#### 2"}])
    assert load_examples(src) == [Example((("user", "1+1?"), ("assistant", "2\n#### 2")))]


def test_jsonl_named_json_and_data_wrapper(tmp_path):
    records = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(3)]
    assert len(load_examples(write_jsonl(tmp_path / "lines.json", records))) == 3
    assert len(load_examples(write_json(tmp_path / "wrapped.json", {"data": records}))) == 3


def test_unicode_line_separator_inside_jsonl_string(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text(json.dumps({"question": "a\u2028b", "answer": "c\x85d"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert load_examples(str(path))[0].messages[0][1] == "a\u2028b"


def test_shared_alpaca_demo():
    examples = load_examples(str(shared("alpaca_en_demo.json")))
    raw = json.loads(shared("alpaca_en_demo.json").read_text(encoding="utf-8"))
    assert len(examples) == len(raw) == 999
    with_input = next(i for i, r in enumerate(raw) if r["input"].strip())
    assert examples[with_input].messages[0][1] == raw[with_input]["instruction"] + "\n\n" + raw[with_input]["input"]
    assert all(ex.response == r["output"] for ex, r in zip(examples, raw))


def test_shared_glaive_toolcall():
    path = shared("glaive_toolcall_en_demo.json")
    examples = load_examples(str(path))
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(examples) == len(raw)
    mapping = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    no_tools = 0
    for ex, record in zip(examples, raw):
        turns = ex.messages
        if record["tools"].strip() == "[]":  # no tools offered: no system turn
            no_tools += 1
        else:
            assert turns[0] == ("system", "You can call these tools:\n" + record["tools"].strip())
            turns = turns[1:]
        assert [r for r, _ in turns] == [mapping[t["from"]] for t in record["conversations"]]
        assert ex.response == record["conversations"][-1]["value"]
    assert 0 < no_tools < len(raw)


def test_shared_gsm8k():
    path = shared("gsm8k_test.jsonl")
    examples = load_examples(str(path))
    assert len(examples) == 1319
    first = json.loads(path.read_text(encoding="utf-8").split("\n", 1)[0])
    assert examples[0].messages == (("user", first["question"]), ("assistant", first["answer"]))


def test_builtin_is_the_config_default():
    from oloraplus.config import TrainConfig  # the CLI's default --data

    assert TrainConfig().data == formats.BUILTIN
    assert len(load_examples(formats.BUILTIN)) >= 1500


def test_hub_id_goes_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list([{"instruction": "Hi.", "input": None, "output": "Hello."}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_examples("someone/some-data") == [Example((("user", "Hi."), ("assistant", "Hello.")))]
    assert calls == [("someone/some-data", "train")]


def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError("Couldn't reach 'someone/x' on the Hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"^someone/x: cannot load .* Couldn't reach 'someone/x' on the Hub$"):
        load_examples("someone/x")


@pytest.mark.parametrize("source", ["missing.json", "dir/missing.jsonl", "./owner/name", "no_such_file"])
def test_missing_local_file(tmp_path, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"^data file not found: {source}$"):
        load_examples(source)


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match="not a data file"):
        load_examples(str(tmp_path))


ALPACA_OK = {"instruction": "i", "input": "", "output": "o"}
BAD_CASES = {
    # name: (file name, file bytes, pattern the message must match after "<path>: ")
    "bad JSON mid-JSONL": ("d.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "q"\n',
                           r"line 2: invalid JSON: Expecting ',' delimiter"),
    "bad JSON in a list": ("d.json", b'[\n{"instruction": "i", "output": "o"},\n{"instruction": }\n]',
                           r"line 3: invalid JSON: Expecting value"),
    "missing field": ("d.json", json.dumps([ALPACA_OK, ALPACA_OK, {"instruction": "i"}]).encode(),
                      r"record 2 \(0-based\): field 'output' missing"),
    "wrong type": ("alpaca.json", json.dumps([ALPACA_OK, {"instruction": "i", "output": 5}]).encode(),
                   r"record 1 \(0-based\): field 'output': expected a non-empty string, got int"),
    "null required": ("d.json", json.dumps([{"instruction": None, "output": "o"}]).encode(),
                      r"record 0 \(0-based\): field 'instruction': expected a non-empty string, got null"),
    "empty string": ("d.jsonl", b'{"question": "q", "answer": "a"}\n\n{"question": " ", "answer": "a"}\n',
                     r"record 1 \(0-based, line 3\): field 'question': expected a non-empty string, got an empty"),
    "input not a string": ("d.json", json.dumps([{"instruction": "i", "input": [1], "output": "o"}]).encode(),
                           r"record 0 \(0-based\): field 'input': expected a string, got list"),
    "non-UTF-8": ("d.jsonl", b'{"question": "q", "answer": "a"}\n{"question": "\xff\xfe", "answer": "a"}\n',
                  r"line 2: not UTF-8 text"),
    "empty list": ("d.json", b"[]", r"the data set is empty"),
    "empty file": ("d.jsonl", b"\n\n", r"the data set is empty"),
    "not a list": ("d.json", b'"just a string"', r"expected a JSON list of records or JSON Lines, got str"),
    "record not an object": ("d.json", b'[1, 2]', r"record 0 \(0-based\): expected a JSON object, got int"),
    "later record not an object": ("d.jsonl", b'{"question": "q", "answer": "a"}\n[1]\n',
                                   r"record 1 \(0-based, line 2\): expected a JSON object, got list"),
    "unknown format": ("d.json", json.dumps([{"prompt": "p", "completion": "c"}]).encode(),
                       r"record 0 \(0-based\): unknown record format \(keys: completion, prompt\)"),
    "ambiguous format": ("d.json", json.dumps([{**ALPACA_OK, "question": "q", "answer": "a"}]).encode(),
                         r"record 0 \(0-based\): ambiguous record, it has the fields of alpaca and question/answer"),
    "mixed formats": ("d.jsonl", b'{"question": "q", "answer": "a"}\n{"instruction": "i", "output": "o"}\n',
                      r"record 1 \(0-based, line 2\): field 'answer' missing: the data set is question/answer"),
    "sharegpt ends with user": ("d.json", json.dumps([{"conversations": [
        {"from": "human", "value": "hi"}]}]).encode(),
        r"record 0 \(0-based\): field 'conversations': the last turn must be the assistant's response"),
    "sharegpt unknown role": ("d.json", json.dumps([{"conversations": [
        {"from": "bot", "value": "hi"}]}]).encode(), r"record 0 \(0-based\): conversations\[0\]: field 'from'"),
    "sharegpt role not a string": ("d.json", json.dumps([{"conversations": [
        {"from": ["gpt"], "value": "hi"}]}]).encode(),
        r"record 0 \(0-based\): conversations\[0\]: field 'from': expected one of .*, got \['gpt'\]$"),
    "sharegpt turn not an object": ("d.json", json.dumps([{"conversations": ["hi"]}]).encode(),
                                    r"record 0 \(0-based\): conversations\[0\]: expected an object"),
    "sharegpt empty": ("d.json", json.dumps([{"conversations": []}]).encode(),
                       r"record 0 \(0-based\): field 'conversations': expected a non-empty list of turns, "
                       r"got an empty list$"),
    "sharegpt bad tools": ("d.json", json.dumps([{"tools": 3, "conversations": [
        {"from": "gpt", "value": "x"}]}]).encode(), r"record 0 \(0-based\): field 'tools'"),
    "huge integer": ("d.jsonl", b'{"question": "q", "answer": "a"}\n{"question": ' + b"9" * 5000 + b"}\n",
                     r"line 2: invalid JSON"),
    "deep nesting": ("d.json", b"[" * 100_000 + b"]" * 100_000, r"invalid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_data_is_one_line_naming_file_and_place(tmp_path, case):
    name, content, pattern = BAD_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_examples(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    assert re.match(pattern, message[len(str(path)) + 2:]), message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["instruction", "input", "output", "question", "answer", "conversations", "from",
                         "value", "messages", "role", "content", "tools", "system", "data", "gpt", "x"]),
        inner, max_size=5),
    max_leaves=12,
)

WORD = st.from_regex(r"[a-z]{1,5}", fullmatch=True)
TEXTISH = st.one_of(WORD, WORD, WORD, st.text(max_size=3), st.none(), st.integers(), st.lists(WORD, max_size=2))
TURN = st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "gpt", "observation", "function_call", "bot"]),
                              "value": TEXTISH})
RECORD_LISTS = st.one_of(  # one format per file, as real files are, with a mixed-format list now and then
    st.lists(st.fixed_dictionaries({"instruction": TEXTISH, "output": TEXTISH}, optional={"input": TEXTISH})),
    st.lists(st.fixed_dictionaries({"question": TEXTISH, "answer": TEXTISH})),
    st.lists(st.fixed_dictionaries({"conversations": st.lists(TURN, max_size=3) | TEXTISH},
                                   optional={"tools": TEXTISH, "system": TEXTISH})),
    st.lists(st.fixed_dictionaries({"question": WORD, "answer": WORD}) | st.fixed_dictionaries({"output": WORD})),
)
NEAR_VALID = RECORD_LISTS.flatmap(
    lambda records: st.sampled_from([json.dumps(records).encode(),
                                     "".join(json.dumps(r) + "\n" for r in records).encode()]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()) | NEAR_VALID,
       suffix=st.sampled_from([".json", ".jsonl", ".txt"]))
def test_arbitrary_input_gives_examples_or_data_error(tmp_path, content, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    try:
        examples = load_examples(str(path))
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        if suffix == ".txt":  # plain text by name: documents, never conversations
            assert examples and all(isinstance(d, Document) and d.text.strip() for d in examples)
        else:
            assert examples and all(ex.messages[-1][0] == "assistant" and ex.response.strip() for ex in examples)


def test_near_valid_strategy_reaches_both_outcomes(tmp_path):
    """Guards the property test above: its inputs must sometimes load and sometimes fail."""
    outcomes = set()

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(content=NEAR_VALID)
    def check(content):
        path = tmp_path / "d.jsonl"
        path.write_bytes(content)
        try:
            load_examples(str(path))
            outcomes.add("ok")
        except DataError:
            outcomes.add("error")

    check()
    assert outcomes == {"ok", "error"}
