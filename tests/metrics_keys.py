"""metrics.json keys that measure the session, not what was learned: they differ between two identical runs."""

TIMING_KEYS = ("train_runtime_s", "tokens_per_s", "seconds_per_step", "load_s")
SESSION_KEYS = (*TIMING_KEYS, "resumed_from_step")  # also differ between a resumed run and an uninterrupted one
