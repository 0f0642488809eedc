"""lm-evaluation-harness on a run's base + adapter (`oloraplus eval RUN_DIR --harness TASKS`).

The adapter is loaded as `oloraplus generate` loads it (any method, base fingerprint checked) and handed
to lm_eval as an already-built model, so the harness scores exactly what a user of the adapter gets.
Tasks shipped here (`harness_tasks/*.yaml`) read local files; other names are lm_eval's own tasks.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import yaml

from oloraplus.errors import ConfigError, DataError

TASKS_DIR = Path(__file__).with_name("harness_tasks")
INSTALL_HINT = 'pip install "oloraplus[harness]"'


def local_tasks() -> dict[str, Path]:
    """Task name → YAML file of the tasks shipped with oloraplus."""
    return {path.stem: path for path in sorted(TASKS_DIR.glob("*.yaml"))}


def task_config(name: str) -> dict[str, Any]:
    """The shipped task's config as a dict (plain YAML: no `!function`, so no lm_eval needed to read it)."""
    path = local_tasks().get(name)
    if path is None:
        raise ConfigError(f"--harness {name}: not a task shipped with oloraplus ({', '.join(local_tasks())})")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _filter_regex(config: dict[str, Any]) -> tuple[re.Pattern, int]:
    for step in config["filter_list"][0]["filter"]:
        if step["function"] == "regex":
            return re.compile(step["regex_pattern"]), int(step.get("group_select", 0))
    raise ConfigError(f"task {config['task']}: no regex filter")


def normalise(text: str, config: dict[str, Any]) -> str:
    """What the task's exact_match compares: its regexes_to_ignore removed, lowercased when ignore_case."""
    metric = config["metric_list"][0]
    for pattern in metric.get("regexes_to_ignore", []):
        text = re.sub(pattern, "", text)
    return text.lower() if metric.get("ignore_case") else text


def extract_answer(generation: str, config: dict[str, Any]) -> str:
    """The task's filter applied to one generation (e.g. the last number), normalised as exact_match
    sees it; "[invalid]" (lm_eval's fallback) when nothing matches. For tests and for reading outputs."""
    regex, group = _filter_regex(config)
    found = regex.findall(generation)
    return normalise(found[group].strip(), config) if found else "[invalid]"


def reference_answer(record: dict[str, Any], config: dict[str, Any]) -> str:
    """The task's `doc_to_target` rendered for one record (Jinja, as lm_eval renders it), normalised."""
    import jinja2

    return normalise(jinja2.Environment().from_string(config["doc_to_target"]).render(**record).strip(), config)


def check_gsm8k_file(path: str | Path) -> int:
    """Number of records in a GSM8K-style JSONL file; a bad file fails here with its line, not deep in lm_eval."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--harness-data {path}: no such file")
    count = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("question", "answer")):
            raise DataError(f"{path}: line {number}: expected string fields 'question' and 'answer'")
        if "####" not in record["answer"]:
            raise DataError(f"{path}: line {number}: field 'answer' has no '#### <final answer>'")
        count += 1
    if not count:
        raise DataError(f"--harness-data {path}: no records (empty file)")
    return count


def task_specs(tasks: list[str], data: str | None) -> tuple[list[str | dict[str, Any]], bool]:
    """lm_eval task specs for `tasks`: shipped tasks as configs with `data` filled in, other names as they
    are. Also whether lm_eval's own task index is needed (building it takes ~20 s)."""
    specs: list[str | dict[str, Any]] = []
    for name in tasks:
        if name not in local_tasks():
            specs.append(name)
            continue
        if data is None:
            raise ConfigError(f"--harness {name} reads a local file: give it with --harness-data FILE "
                              "(JSON Lines with 'question' and 'answer' ending in '#### <number>')")
        check_gsm8k_file(data)
        config = task_config(name)
        config["dataset_kwargs"]["data_files"]["test"] = str(Path(data).resolve())
        specs.append(config)
    return specs, any(isinstance(s, str) for s in specs)


def require_lm_eval() -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"--harness needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


def parse_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--harness: give one or more task names, comma-separated (e.g. gsm8k_local)")
    return tasks


def sample_rows(samples: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """lm_eval's logged samples as flat rows: prompt, raw generation, what the filter kept, target, score."""
    rows = []
    for task, items in samples.items():
        for item in items:
            scores = {k: item[k] for k in item.get("metrics", []) if k in item}
            rows.append({"task": task, "doc_id": item["doc_id"], "filter": item["filter"],
                         "prompt": item["arguments"][0][0], "generation": item["resps"][0][0],
                         "extracted": item["filtered_resps"][0], "target": item["target"], **scores})
    return rows


def run_harness(model, tokenizer, tasks: list[str], *, data: str | None = None, limit: int | None = None,
                max_new_tokens: int = 256, batch_size: int = 8,
                ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """lm_eval's `simple_evaluate` on an already-loaded model → ({task: {"metric,filter": value, n: samples}},
    per-example rows).

    The prompt goes through the tokenizer's chat template when it has one, as in training and `generate`.
    """
    require_lm_eval()
    specs, needs_index = task_specs(tasks, data)
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    chat = getattr(tokenizer, "chat_template", None) is not None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(lm, tasks=specs, limit=limit, task_manager=TaskManager(include_defaults=needs_index),
                          gen_kwargs={"max_gen_toks": max_new_tokens}, apply_chat_template=chat,
                          log_samples=True, bootstrap_iters=0)
    if out is None:  # only on non-zero ranks of a distributed run
        return {}, []
    results: dict[str, dict[str, Any]] = {}
    for task, values in out["results"].items():
        row = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not k.startswith("alias")}
        row["n"] = out.get("n-samples", {}).get(task, {}).get("effective")
        row.update(limit=limit, max_new_tokens=max_new_tokens, chat_template=chat)
        results[task] = row
    return results, sample_rows(out.get("samples") or {})


def harness_eval(run_dir: str | Path, tasks: list[str], *, data: str | None = None, limit: int | None = None,
                 max_new_tokens: int = 256, batch_size: int = 8, device: str | None = None,
                 model: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the harness on RUN_DIR's base (or `model`) + adapter; merge the results into metrics.json["harness"] and
    write each example (prompt, generation, extracted answer, target, score) to harness_samples.jsonl."""
    from oloraplus import rundir
    from oloraplus.eval.chat import load_for_generation
    from oloraplus.io import atomic_write_text
    from oloraplus.paths import portable_path

    task_specs(tasks, data)  # bad flags or data fail before the model loads
    require_lm_eval()
    if not rundir.is_run(Path(run_dir)):  # the results go into the run's metrics.json
        raise ConfigError(f"--harness: {run_dir}: not an oloraplus run (no {rundir.CONFIG_FILE}); the harness records "
                          "its results in a run (evaluate a bare adapter with --data instead)")
    lm, tokenizer = load_for_generation(run_dir, device=device, model=model)
    results, rows = run_harness(lm, tokenizer, tasks, data=data, limit=limit, max_new_tokens=max_new_tokens,
                                batch_size=batch_size)
    for task, row in results.items():
        if task in local_tasks() and data is not None:
            row["data"] = portable_path(data)
    atomic_write_text(Path(run_dir) / rundir.HARNESS_SAMPLES_FILE,
                      "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
    rundir.update_metrics(Path(run_dir), results, under="harness")
    return results
