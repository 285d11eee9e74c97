"""Tuning: hyperparameter search over runs (search.py, search_space.py) and one run per strategy
compared side by side (compare.py)."""

# What a run or trial whose process ended by SIGKILL is called (compare's runs, search.parallel's
# workers): on Linux most often the kernel's out-of-memory killer, which says so only in its own log.
KILLED = "killed (out of memory?)"
