"""Evaluate and compare: resumable sweeps, the report (tables, paired CIs, plots), λ search."""
