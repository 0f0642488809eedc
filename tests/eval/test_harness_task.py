"""The shipped lm-eval GSM8K task (harness_tasks/gsm8k_local.yaml) and `eval --harness` flag checks.

No lm_eval needed: the YAML's own filter regex and exact_match normalisation are applied in Python, so
the answer extraction is tested in CI; `test_harness_smollm2.py` checks lm_eval agrees with it.
"""

import json
import re

import pytest

from oloraplus.cli.main import main
from oloraplus.errors import ConfigError, DataError
from oloraplus.eval import harness
from oloraplus.eval.harness import extract_answer, reference_answer, task_config, task_specs
from tests.conftest import SHARED_DATA

CONFIG = task_config("gsm8k_local")


@pytest.mark.parametrize("generation, expected", [
    ("Janet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("The answer is 1,234.", "1234"),
    ("So she pays $1,234.50 in total", "1234.50"),
    ("It costs 18.00 dollars", "18"),
    ("The temperature drops to -5 degrees.", "-5"),
    ("3 apples and 7 pears", "7"),  # the final number, not the first
    ("#### 72\n", "72"),
    ("I do not know.", "[invalid]"),
    ("", "[invalid]"),
])
def test_final_number_is_extracted(generation, expected):
    assert extract_answer(generation, CONFIG) == expected


@pytest.mark.parametrize("answer, expected", [
    ("2 + 2 = <<2+2=4>>4\n#### 4", "4"),
    ("Total: 1,000 + 234 = 1,234\n#### 1,234", "1234"),
    ("He loses <<5-8=-3>>-3\n#### -3", "-3"),
])
def test_reference_is_the_number_after_hashes(answer, expected):
    assert reference_answer({"question": "q", "answer": answer}, CONFIG) == expected


def test_right_and_wrong_answers_are_told_apart():
    target = reference_answer({"question": "q", "answer": "...\n#### 1,234"}, CONFIG)
    assert extract_answer("so 1234 in all", CONFIG) == target
    assert extract_answer("so $1,234 in all", CONFIG) == target
    assert extract_answer("1234 then 12", CONFIG) != target
    assert extract_answer("12345", CONFIG) != target


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k_test.jsonl").is_file(), reason="../shared/data/gsm8k_test.jsonl absent")
def test_every_gsm8k_test_solution_scores_as_right():
    """A worked solution ends with '#### N': its final number must be N for all 1319 records."""
    path = SHARED_DATA / "gsm8k_test.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert harness.check_gsm8k_file(path) == len(records) == 1319
    for record in records:
        target = reference_answer(record, CONFIG)
        assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", target), record["answer"]
        assert extract_answer(record["answer"], CONFIG) == target


def test_task_yaml_is_a_local_generate_until_task():
    assert CONFIG["task"] == "gsm8k_local" and CONFIG["output_type"] == "generate_until"
    assert CONFIG["dataset_path"] == "json" and CONFIG["test_split"] == "test"
    assert CONFIG["metric_list"][0]["metric"] == "exact_match"
    assert "Question:" in CONFIG["generation_kwargs"]["until"]


def test_specs_fill_in_the_data_file(tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
    specs, needs_index = task_specs(["gsm8k_local"], str(data))
    assert specs[0]["dataset_kwargs"]["data_files"]["test"] == str(data.resolve()) and not needs_index
    assert task_config("gsm8k_local")["dataset_kwargs"]["data_files"]["test"] is None  # not changed in place
    specs, needs_index = task_specs(["gsm8k_local", "hellaswag"], str(data))
    assert specs[1] == "hellaswag" and needs_index


@pytest.mark.parametrize("content, match", [
    ("", "no records"),
    ("{not json\n", "line 1: invalid JSON"),
    ('{"question": "q", "answer": "4"}\n', "line 1: field 'answer' has no '#### "),
    ('{"question": "q", "answer": "#### 4"}\n{"question": "q"}\n', "line 2: expected string fields"),
])
def test_bad_data_files_are_data_errors(tmp_path, content, match):
    data = tmp_path / "g.jsonl"
    data.write_text(content)
    with pytest.raises(DataError, match=match):
        task_specs(["gsm8k_local"], str(data))


def test_missing_data_and_no_tasks_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--harness-data FILE"):
        task_specs(["gsm8k_local"], None)
    with pytest.raises(DataError, match="no such file"):
        task_specs(["gsm8k_local"], str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="one or more task names"):
        harness.parse_tasks(" , ")


@pytest.mark.parametrize("extra, match", [
    (["--harness", "gsm8k_local", "--generate", "2"], "drop --data/--generate"),
    (["--harness", "gsm8k_local", "--harness-limit", "0"], "--harness-limit 0"),
    (["--harness", ","], "one or more task names"),
    (["--harness", "gsm8k_local"], "--harness-data FILE"),
])
def test_bad_harness_flags_exit_2_with_one_line(tmp_path, capsys, extra, match):
    assert main(["eval", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_without_lm_eval_the_error_says_how_to_install(tmp_path, capsys, monkeypatch):
    real = harness.importlib.util.find_spec
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "#### 4"}) + "\n")
    assert main(["eval", str(tmp_path), "--harness", "gsm8k_local", "--harness-data", str(data)]) == 2
    err = capsys.readouterr().err
    assert 'pip install "oloraplus[harness]"' in err and err.count("\n") == 1
