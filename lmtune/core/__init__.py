"""What every layer of lmtune builds on: errors, the run config, run folders, models, memory,
trackers, collectives and the run-time helpers (core/runtime.py)."""

__version__ = "0.1.0"
