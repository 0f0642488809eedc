"""Compose independently trained LoRA adapters: exact summation ΔW = Σ w_i ΔW_i and the interference diagnostic.

Adapters are read by `oloraplus.adapters.adapter_dir`. Modules: `sum` (concatenated-rank sum, atomic write),
`interference` (RMS over layers of the pairwise cosine of ΔW), `cli` (the `compose` and `compose-study` commands).
`compose-study` (Cao et al.'s summed vs merged-data adapters): `study_spec` (SPEC.yaml), `study_plan` (the runs
and merged data), `study_fit` (perplexity changes, line fit, scatter), `study_report` (study.md), and `study`,
which runs it all.
"""

# The diagnostic's files, here rather than in `interference` (torch) so `compose` checks its --output first.
INTERFERENCE_FILE = "interference.json"
HEATMAP_FILE = "interference.png"
