"""Read instruction data into one shape: a conversation whose last turn is the target response.

Formats, detected from the first record's keys: Alpaca (`instruction`, `input`, `output`),
ShareGPT (`conversations` of `from`/`value`), chat messages (`messages` of `role`/`content`, content a
string or a list of text parts), question/answer (GSM8K's `question`, `answer`), and plain text (`text`
records, or a `.txt` file) read into `Document`s; plus `builtin:stdlib` and Hugging Face dataset ids.
Preference and KTO records are refused (`data.preference`). Every problem is a DataError of one line naming
the file, the record and the field. Records are counted from 0 ("record 0 (0-based)"), lines of a file
from 1, as editors do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from oloraplus.data.content import content_text, loss_weight
from oloraplus.data.example import ROLES, Document, Example
from oloraplus.data.preference import refuse_preference
from oloraplus.errors import DataError
from oloraplus.models import HUB_ID

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool", "system": "system"}
BUILTIN = "builtin:stdlib"
TEXT_SUFFIXES = (".txt",)
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")  # a blank line ends a document of a .txt file


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(record: dict, key: str, where: str, required: bool = True) -> str:
    """A string field; `required` ones must be non-empty, optional ones may be missing or null."""
    value = record.get(key)
    if not required and value is None:
        return ""
    if isinstance(value, str) and (value.strip() or not required):
        return value
    expected = "a non-empty string" if required else "a string"
    if key not in record:
        got = "nothing (field missing)"
    elif isinstance(value, str):
        got = "an empty string"
    else:
        got = _type_name(value)
    raise DataError(f"{where}: field '{key}': expected {expected}, got {got}")


def parse_alpaca(record: dict, where: str) -> Example:
    instruction = _text(record, "instruction", where)
    extra = _text(record, "input", where, required=False).strip()
    output = _text(record, "output", where)
    user = instruction + ("\n\n" + extra if extra else "")
    return Example((("user", user), ("assistant", output)), input=extra)


def parse_qa(record: dict, where: str) -> Example:
    return Example((("user", _text(record, "question", where)), ("assistant", _text(record, "answer", where))))


def _system_message(record: dict, where: str) -> list[tuple[str, str]]:
    """Top-level `system` and `tools` become one leading system turn (many templates allow only one)."""
    parts = []
    system = _text(record, "system", where, required=False).strip()
    if system:
        parts.append(system)
    tools = record.get("tools")
    if isinstance(tools, (list, dict)):
        tools = json.dumps(tools, ensure_ascii=False) if tools else ""
    elif tools is not None and not isinstance(tools, str):
        raise DataError(f"{where}: field 'tools': expected a string or a list, got {_type_name(tools)}")
    if tools and tools.strip() not in ("", "[]"):
        parts.append("You can call these tools:\n" + tools.strip())
    return [("system", "\n\n".join(parts))] if parts else []


def _tool_call_content(turn: dict, where: str) -> str:
    """An OpenAI-style `tool_calls` list as the JSON the ShareGPT `function_call` turn holds."""
    calls = []
    for i, call in enumerate(turn["tool_calls"]):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(f"{where}: tool_calls[{i}]: expected an object with a 'name'")
        calls.append({"name": function["name"], "arguments": function.get("arguments", {})})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def _parse_turns(record: dict, where: str, key: str, role_key: str, text_key: str, roles: dict[str, str]) -> Example:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        got = _type_name(turns) if not isinstance(turns, list) else "an empty list"
        raise DataError(f"{where}: field '{key}': expected a non-empty list of turns, got {got}")
    messages = _system_message(record, where)
    no_loss, tool_calls = set(), set()
    for i, turn in enumerate(turns):
        turn_where = f"{where}: {key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(f"{turn_where}: expected an object with '{role_key}' and '{text_key}', "
                            f"got {_type_name(turn)}")
        speaker = turn.get(role_key)
        if not isinstance(speaker, str) or speaker not in roles:
            raise DataError(f"{turn_where}: field '{role_key}': expected one of {', '.join(roles)}, "
                            f"got {speaker!r:.40}")
        role, index = roles[speaker], len(messages)
        if role == "assistant" and isinstance(turn.get("tool_calls"), list) and turn["tool_calls"]:
            text = _tool_call_content(turn, turn_where)
            tool_calls.add(index)
        else:
            parts = content_text(turn.get(text_key), f"{turn_where}: field '{text_key}'")
            fields = {**turn, text_key: parts} if parts is not None else turn
            text = _text(fields, text_key, turn_where, required=i == len(turns) - 1)
            if speaker == "function_call":
                tool_calls.add(index)
        if role == "assistant" and not loss_weight(turn, turn_where):
            no_loss.add(index)
        messages.append((role, text))
    if messages[-1][0] != "assistant":
        raise DataError(f"{where}: field '{key}': the last turn must be the assistant's response "
                        f"(the training target), got {turns[-1][role_key]!r}")
    return Example(tuple(messages), no_loss=frozenset(no_loss), tool_calls=frozenset(tool_calls))


def parse_sharegpt(record: dict, where: str) -> Example:
    return _parse_turns(record, where, "conversations", "from", "value", SHAREGPT_ROLES)


def parse_messages(record: dict, where: str) -> Example:
    return _parse_turns(record, where, "messages", "role", "content", {role: role for role in ROLES})


def parse_text(record: dict, where: str) -> Document:
    return Document(_text(record, "text", where))


FORMATS: dict[str, tuple[frozenset[str], Callable[[dict, str], Example | Document]]] = {
    "alpaca": (frozenset({"instruction", "output"}), parse_alpaca),
    "sharegpt": (frozenset({"conversations"}), parse_sharegpt),
    "messages": (frozenset({"messages"}), parse_messages),
    "question/answer": (frozenset({"question", "answer"}), parse_qa),
    "plain text": (frozenset({"text"}), parse_text),
}


def detect_format(record: Any, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {_type_name(record)}")
    refuse_preference(record, where)
    found = [name for name, (keys, _) in FORMATS.items() if keys <= record.keys()]
    if len(found) == 1:
        return found[0]
    keys = ", ".join(sorted(map(str, record))[:8]) or "none"
    if found:
        raise DataError(f"{where}: ambiguous record, it has the fields of {' and '.join(found)} (keys: {keys})")
    raise DataError(f"{where}: unknown record format (keys: {keys}); expected Alpaca (instruction, output), "
                    "ShareGPT (conversations), chat (messages), question/answer (question, answer) or plain text (text)")


def parse_records(records: Iterable[tuple[str, Any]], source: str) -> list[Example] | list[Document]:
    """`records` yields (where, record); the format of the first record applies to every record."""
    examples: list = []
    fmt = None
    for where, record in records:
        if fmt is None:
            fmt = detect_format(record, where)
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {_type_name(record)}")
        refuse_preference(record, where)  # a later KTO record must not train either
        keys, parse = FORMATS[fmt]
        missing = sorted(keys - record.keys())
        if missing:
            raise DataError(f"{where}: field '{missing[0]}' missing: the data set is {fmt} "
                            "(detected from its first record), and every record must be")
        examples.append(parse(record, where))
    if not examples:
        raise DataError(f"{source}: the data set is empty")
    return examples


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text (bad byte at offset {exc.start})") from None


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _loads(text: str, where: str) -> Any:
    """json.loads with every failure as a DataError (ValueError: over-long integers; RecursionError: nesting)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{where}: invalid JSON: {_reason(exc)}") from None


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, Any]]:
    index = 0
    # split on "\n" only: JSON strings may hold U+2028 and other characters str.splitlines() breaks on
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        yield f"{path}: record {index} (0-based, line {lineno})", _loads(line, f"{path}: line {lineno}")
        index += 1


def _file_records(path: Path, text: str) -> Iterable[tuple[str, Any]]:
    """A JSON list, a {"data": [...]} object, or JSON Lines, told apart by content, not by file name
    (hub dumps named .json are often JSON Lines)."""
    if not text.strip():
        return iter(())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and not text.lstrip().startswith("["):  # a second JSON value: JSON Lines
            return _jsonl_records(path, text)
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, deep nesting
        raise DataError(f"{path}: invalid JSON: {_reason(exc)}") from None
    if isinstance(data, dict):
        data = data["data"] if isinstance(data.get("data"), list) else [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records or JSON Lines, got {_type_name(data)}")
    return ((f"{path}: record {i} (0-based)", record) for i, record in enumerate(data))


def text_documents(path: Path, text: str) -> list[Document]:
    """A `.txt` file: one document per block of text between blank lines (each ends with EOS when encoded)."""
    documents = [Document(block.strip("\n")) for block in PARAGRAPH_BREAK.split(text) if block.strip()]
    if not documents:
        raise DataError(f"{path}: the data set is empty")
    return documents


def load_file(path: Path) -> list[Example] | list[Document]:
    text = _read_text(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return text_documents(path, text)
    return parse_records(_file_records(path, text), str(path))


def load_hub_dataset(dataset_id: str, split: str = "train") -> list[Example] | list[Document]:
    """A Hugging Face dataset id (needs the hub): its records are parsed like a local file's."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # network, unknown id, auth, bad script: all end the run the same way
        raise DataError(f"{dataset_id}: cannot load the data set from the Hugging Face hub: {_reason(exc)}") from exc
    return parse_records(((f"{dataset_id}: record {i} (0-based)", r) for i, r in enumerate(ds)), dataset_id)


def looks_like_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and Path(source).suffix not in (".json", ".jsonl", ".txt")


def load_examples(source: str) -> list[Example] | list[Document]:
    """Load `--data`: a JSON/JSONL or .txt file, `builtin:stdlib`, or a hub dataset id (`owner/name`)."""
    if source == BUILTIN:
        from oloraplus.data.builtin import stdlib_examples

        return stdlib_examples()
    path = Path(source)
    try:
        is_file, exists = path.is_file(), path.exists()
    except OSError as exc:  # e.g. a name too long for the file system
        raise DataError(f"data file not usable: {source[:80]}: {exc.strerror or exc}") from None
    if is_file:
        return load_file(path)
    if exists:
        raise DataError(f"{source}: not a data file (a directory?)")
    if looks_like_hub_id(source):
        return load_hub_dataset(source)
    raise DataError(f"data file not found: {source}")
