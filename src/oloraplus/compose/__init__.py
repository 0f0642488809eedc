"""Compose independently trained LoRA adapters: exact summation ΔW = Σ w_i ΔW_i and the interference diagnostic.

Modules: `io` (read and validate a PEFT adapter), `sum` (concatenated-rank sum, atomic write),
`interference` (RMS over layers of the pairwise cosine of ΔW), `cli` (the `oloraplus compose` command).
"""

# The diagnostic's files, here rather than in `interference` (torch) so `compose` checks its --output first.
INTERFERENCE_FILE = "interference.json"
HEATMAP_FILE = "interference.png"
