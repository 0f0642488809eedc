"""The report on hand-written runs: table values, paired CIs and verdicts, steps to target, refinement."""

from __future__ import annotations

from pathlib import Path

import pytest
from experiment_helpers import write_run

from oloraplus.cli.main import build_parser
from oloraplus.errors import ConfigError
from oloraplus.experiments.cli import parse_baseline
from oloraplus.experiments.report import format_table, write_report
from oloraplus.experiments.runs import find_runs

SEEDS = (1, 2, 3)
BASE_LOSS = {1: 2.0, 2: 2.1, 3: 2.2}
PNG = b"\x89PNG\r\n\x1a\n"


def _log(curve: list[float], diag: dict[str, float] | None = None) -> list[dict]:
    records = []
    for step, loss in zip((10, 20, 30), curve):
        records.append({"step": step, "loss": loss + 0.3, "lr_A": 1e-3, "lr_B": 1e-3, "grad_norm": 1.0})
        if diag:  # an earlier, different diagnostic record must not be the one reported
            scale = step / 30
            records.append({"step": step, **{k: v * scale for k, v in diag.items()}})
        records.append({"step": step, "eval_loss": loss})
    return records


def _generations(shift_rouge: float, bleu_signs: list[float]) -> list[dict]:
    return [{"index": i, "prompt": f"p{i}", "reference": "r", "generation": "g", "rougeL": 10.0 * (i + 1) + shift_rouge,
             "bleu": 20.0 + sign} for i, sign in enumerate(bleu_signs)]


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    """olora λ=1 (baseline), λ=4 (better), λ=0.25 (no difference) over 3 seeds; lora λ=1 with one seed."""
    runs = tmp_path / "runs"
    for seed in SEEDS:
        base = BASE_LOSS[seed]
        arms = {
            1.0: ([base + 0.3, base + 0.1, base], 40.0 + 2 * (seed - 1), _generations(0.0, [0] * 20), 0.2),
            4.0: ([2.5, base - 0.01, {1: 1.90, 2: 2.02, 3: 2.08}[seed]], 41.0 + 2 * (seed - 1),
                  _generations(5.0, [1, -1] * 10), 0.5),
            0.25: ([2.6, 2.3, {1: 2.05, 2: 2.05, 3: 2.35}[seed]], None, None, 0.05),
        }
        for ratio, (curve, rouge1, generations, distance) in arms.items():
            metrics = {"method": "olora", "ratio": ratio, "eval_loss": curve[-1], "steps": 30}
            if rouge1 is not None:
                metrics["rouge1"] = rouge1
            write_run(runs / f"olora-{ratio}-{seed}", {"model": "m", "method": "olora", "ratio": ratio, "seed": seed},
                      metrics, _log(curve, {"diag_subspace_distance": distance, "diag_rel_change_B": 1.5 * distance}),
                      generations)
    write_run(runs / "lora-1", {"model": "m", "method": "lora", "ratio": 1.0, "seed": 1},
              {"method": "lora", "ratio": 1.0, "eval_loss": 2.5}, _log([2.9, 2.7, 2.5]))
    return tmp_path


def test_table_shows_mean_and_std_over_seeds_and_dashes_for_missing_metrics(sweep_dir):
    table = format_table(find_runs(sweep_dir))
    assert table.startswith("model: m\n")
    assert "| method | seeds | eval loss | ROUGE-1 | ROUGE-2 | ROUGE-L | corpus BLEU |" in table
    assert "| lora λ=1 | 1 | 2.5000 | – | – | – | – |" in table
    assert "| olora λ=0.25 | 3 | 2.1500 ± 0.1732 | – | – | – | – |" in table
    assert "| olora λ=1 | 3 | 2.1000 ± 0.1000 | 42.00 ± 2.00 | – | – | – |" in table
    assert "| olora λ=4 | 3 | 2.0000 ± 0.0917 | 43.00 ± 2.00 | – | – | – |" in table
    lines = table.splitlines()
    rows = [line.split(" | ")[0] for line in lines[4:]]
    assert rows == ["| lora λ=1", "| olora λ=0.25", "| olora λ=1", "| olora λ=4"]


def test_report_has_paired_intervals_and_verdicts(sweep_dir):
    report = write_report(sweep_dir).read_text()
    # d = [−0.10, −0.08, −0.12]: mean −0.1, sd 0.02, half-width 4.302653 · 0.02/√3 = 0.049683;
    # t = 0.1/(0.02/√3) = 8.660, p = 1 − t/√(2 + t²) = 0.0131 (ν = 2); Holm over the 2 eval-loss comparisons:
    # 0.026. Adjusted CI, family of 2: level 1 − 0.05/2 = 0.975, t with A(t|2) = t/√(2 + t²) = 0.975:
    # t² = 2·0.975²/(1 − 0.975²), t = 6.205263, half-width 6.205263 · 0.02/√3 = 0.071652
    assert ("| olora λ=4 | eval loss | -0.1000 | [-0.1497, -0.0503] | [-0.1717, -0.0283] | 3 | 0.013 | 0.026 "
            "| better |") in report
    assert "| olora λ=4 | ROUGE-1 | +1.00 | [+1.00, +1.00] | [+1.00, +1.00] | 3 | <0.001 | <0.001 | better |" in report
    # d = [0.05, −0.05, 0.15]: mean 0.05, sd 0.1, half-width 0.248414 (adjusted 6.205263 · 0.1/√3 = 0.358261);
    # p 0.478, its Holm step (×1) stays 0.478
    assert ("| olora λ=0.25 | eval loss | +0.0500 | [-0.1984, +0.2984] | [-0.3083, +0.4083] | 3 | 0.478 | 0.478 "
            "| no significant difference |") in report
    assert "| lora λ=1 | eval loss | +0.5000 | [–, –] | – | 1 | – | – | too few to tell |" in report
    assert "| olora λ=1 | eval loss" not in report  # the baseline is not compared with itself
    assert "eval loss (2 comparisons); ROUGE-1 (1 comparison); ROUGE-L (1 comparison, examples)" in report
    # per-example: ROUGE-L +5 on each of 20 examples × 3 seeds; BLEU ±1 averages to 0
    assert ("| olora λ=4 | ROUGE-L | +5.00 | [+5.00, +5.00] | [+5.00, +5.00] | 3 × ≥20 | <0.001 | <0.001 "
            "| better |") in report
    bleu = next(line for line in report.splitlines() if line.startswith("| olora λ=4 | sentence BLEU |"))
    assert bleu.startswith("| olora λ=4 | sentence BLEU | +0.00 | [-")
    assert bleu.endswith("| 3 × ≥20 | 1.000 | 1.000 | no significant difference |")


def test_bootstrap_bleu_is_labelled_sentence_bleu_not_the_tables_corpus_bleu(tmp_path):
    for seed in SEEDS:  # corpus BLEU equal (0.00) while every example's sentence BLEU is 1 lower
        for ratio, bleu in ((1.0, 1.0), (4.0, 0.0)):
            generations = [{"index": i, "prompt": "p", "reference": "r", "generation": "g", "bleu": bleu}
                           for i in range(20)]
            write_run(tmp_path / "runs" / f"olora-{ratio}-{seed}", {"model": "m", "method": "olora", "ratio": ratio,
                      "seed": seed}, {"eval_loss": 2.0, "bleu": 0.0}, generations=generations)
    lines = write_report(tmp_path).read_text().splitlines()
    assert ("| olora λ=4 | corpus BLEU | +0.00 | [+0.00, +0.00] | [+0.00, +0.00] | 3 | 1.000 | 1.000 "
            "| no significant difference |") in lines
    assert ("| olora λ=4 | sentence BLEU | -1.00 | [-1.00, -1.00] | [-1.00, -1.00] | 3 × ≥20 | <0.001 | <0.001 "
            "| worse |") in lines
    assert not any("| BLEU |" in line for line in lines)
    assert any("*sentence* BLEU" in line and "not the corpus BLEU" in line for line in lines)


def test_report_plots_long_labels_without_layout_warnings(tmp_path, recwarn):
    for ratio, modules in ((1.0, []), (4.0, ["q_proj", "k_proj"] * 20)):  # a label wider than the figure
        write_run(tmp_path / "runs" / f"r{ratio}", {"model": "m", "method": "olora", "ratio": ratio,
                  "target_modules": modules}, {"eval_loss": 2.0}, _log([2.3, 2.1, 2.0]))
    write_report(tmp_path, baseline={"method": "olora", "ratio": 1.0})
    assert [str(w.message) for w in recwarn if "layout" in str(w.message).lower()] == []
    assert any(tmp_path.glob("plots/steps-to-baseline*.png"))


def test_report_counts_steps_to_the_baselines_final_eval_loss(sweep_dir):
    report = write_report(sweep_dir).read_text()
    assert "| olora λ=4 | 2.1000 | 20 | 3/3 |" in report
    assert "| olora λ=0.25 | 2.1000 | 30 | 1/3 |" in report  # only seed 2 (2.05 <= 2.1) gets there
    assert "| lora λ=1 | 2.0000 | – | not reached |" in report
    assert "| olora λ=1 | 2.1000 | 30 | 3/3 |" in report


def test_turn_per_displacement_does_not_restate_lambda(sweep_dir):
    """The fixture's B moves 10× further at λ = 4 than at λ = 1/4, always turning 2/3 of its movement: the
    distance grows with λ, the turn per displacement does not, and no regime verdict is drawn."""
    report = write_report(sweep_dir).read_text()
    assert "| olora λ=0.25 | 0.0750 | 0.0500 | 0.667 |" in report
    assert "| olora λ=1 | 0.3000 | 0.2000 | 0.667 |" in report
    assert "| olora λ=4 | 0.7500 | 0.5000 | 0.667 |" in report
    assert "| explored" not in report and "- refined" not in report and "No refined/explored verdict" in report
    assert "| lora λ=1 | –" not in report  # no diagnostics logged for LoRA


def test_report_writes_every_plot_it_links(sweep_dir):
    report = write_report(sweep_dir).read_text()
    names = {"loss-curves.png", "metrics-vs-ratio.png", "steps-to-baseline.png", "diagnostics-vs-ratio.png"}
    for name in names:
        assert f"(plots/{name})" in report
        assert (sweep_dir / "plots" / name).read_bytes().startswith(PNG)


def test_baseline_can_be_chosen_and_a_missing_one_is_reported(sweep_dir):
    report = write_report(sweep_dir, baseline={"method": "lora", "ratio": 1.0}).read_text()
    assert "### Versus the baseline (lora λ=1)" in report
    assert "| olora λ=4 | eval loss | -0.6000 | [–, –] | – | 1 | – | – | too few to tell |" in report
    report = write_report(sweep_dir, baseline={"method": "pissa"}).read_text()
    assert "No run matches the baseline (method=pissa)" in report


def test_models_get_separate_tables_and_plots(tmp_path):
    for model in ("m1", "hub/m2"):
        for ratio in (1.0, 2.0):
            write_run(tmp_path / "runs" / f"{model.replace('/', '_')}-{ratio}",
                      {"model": model, "method": "olora", "ratio": ratio}, {"eval_loss": 1.0 + ratio})
    write_report(tmp_path)
    table = format_table(find_runs(tmp_path))
    assert "model: m1\n" in table and "model: hub/m2\n" in table
    assert len(list((tmp_path / "plots").glob("loss-curves_*.png"))) == 2


def test_report_command_prints_the_table_and_checks_its_flags(sweep_dir, capsys):
    args = build_parser().parse_args(["report", str(sweep_dir), "--baseline", "method=olora,ratio=4"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| olora λ=1 | 3 | 2.1000 ± 0.1000 |" in out and "report.md" in out
    assert "### Versus the baseline (olora λ=4)" in (sweep_dir / "report.md").read_text()
    with pytest.raises(ConfigError, match="--baseline: unknown key 'metod'"):
        parse_baseline("metod=lora")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_baseline("lora")


def test_a_directory_without_runs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path)


def test_execution_only_options_do_not_split_an_arm(tmp_path):
    """A run recorded before `generate_batch_size` existed and one with it set are the same arm."""
    import yaml

    from oloraplus.experiments.runs import group_arms

    old = write_run(tmp_path / "runs" / "a", {"seed": 1, "method": "olora"}, {"eval_loss": 1.0})
    recorded = yaml.safe_load((old / "config.yaml").read_text())
    del recorded["config"]["generate_batch_size"]
    (old / "config.yaml").write_text(yaml.safe_dump(recorded))
    write_run(tmp_path / "runs" / "b", {"seed": 2, "method": "olora", "generate_batch_size": 8,
                                        "logging_steps": 1}, {"eval_loss": 3.0})
    write_run(tmp_path / "runs" / "c", {"seed": 1, "method": "olora", "lr": 1e-3}, {"eval_loss": 2.0})
    arms = group_arms(find_runs(tmp_path))["smollm2-135m"]
    assert [(arm.label, len(arm.runs)) for arm in arms] == [("olora λ=1 lr=0.0003", 2), ("olora λ=1 lr=0.001", 1)]


def test_an_option_only_one_method_reads_labels_only_that_methods_arms():
    from oloraplus.config import applies_to
    from oloraplus.experiments.runs import Arm

    params = {"method": "lora", "ratio": 1.0, "ohora_init": "ranked", "lr": 1e-3}
    assert Arm("m", params).label == "lora λ=1 lr=0.001"
    assert Arm("m", {**params, "method": "ohora", "ohora_init": "paper"}).label == "ohora λ=1 ohora_init=paper lr=0.001"
    assert applies_to("ohora_init", "ohora") and not applies_to("ohora_init", "olora")
    assert applies_to("lr", "lora") and applies_to("not_an_option", "lora")


def _three_seed_arms(root: Path, deltas: dict[float, list[float]], diverged: dict[float, int] | None = None) -> Path:
    """olora λ=1 (baseline, eval loss 2.0 on every seed) and one arm per λ with the given per-seed differences."""
    for seed in SEEDS:
        write_run(root / "runs" / f"base-{seed}", {"model": "m", "method": "olora", "ratio": 1.0, "seed": seed},
                  {"eval_loss": 2.0})
        for ratio, d in deltas.items():
            metrics = ({"diverged": True, "diverged_step": 2} if (diverged or {}).get(ratio) == seed
                       else {"eval_loss": 2.0 + d[seed - 1]})
            write_run(root / "runs" / f"r{ratio}-{seed}", {"model": "m", "method": "olora", "ratio": ratio,
                                                          "seed": seed}, metrics)
    return root


def test_holm_withdraws_verdicts_a_single_comparison_would_give(tmp_path):
    # each arm alone: d = [−0.07, −0.10, −0.13], t = 5.774, p = 1 − t/√(2 + t²) = 0.0287 < 0.05 and the CI excludes 0;
    # as a family of two, Holm multiplies the smaller by 2 (0.0574): neither is called better
    d = [-0.07, -0.10, -0.13]
    report = write_report(_three_seed_arms(tmp_path, {0.25: d, 4.0: d})).read_text()
    for label in ("olora λ=0.25", "olora λ=4"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {label} | eval loss |"))
        assert row.endswith("| 3 | 0.029 | 0.057 | no significant difference |"), row
        assert "[-0.1745, -0.0255]" in row  # the per-comparison interval excludes 0
        # the family's simultaneous interval (level 0.975: t = 6.205263, half-width 6.205263 · 0.03/√3) does not
        assert "| [-0.1745, -0.0255] | [-0.2075, +0.0075] |" in row
    assert "eval loss (2 comparisons)" in report


def test_a_diverged_seed_withholds_the_verdict_and_is_counted(tmp_path):
    d = [-0.10, -0.11, -0.12]
    clean = write_report(_three_seed_arms(tmp_path / "clean", {4.0: d})).read_text()
    # t = 0.11/(0.01/√3) = 19.05, p = 1 − t/√(2 + t²) = 0.0028, alone in its family
    assert ("| olora λ=4 | eval loss | -0.1100 | [-0.1348, -0.0852] | [-0.1348, -0.0852] | 3 | 0.003 | 0.003 "
            "| better |") in clean  # a family of one: the adjusted interval is the interval
    report = write_report(_three_seed_arms(tmp_path / "div", {4.0: d, 16.0: d}, diverged={4.0: 3, 16.0: 1})).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| olora λ=4 | eval loss |"))
    assert row.endswith("| 2 | – | – | 1/3 diverged: verdict withheld |"), row  # seeds 1-2 shown, no verdict
    assert "| olora λ=4 | 3 (1 diverged) |" in report  # the results table counts it too
    assert "2 comparisons withheld from the families" in report and "none tested" in report
