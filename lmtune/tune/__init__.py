"""Tuning: hyperparameter search over runs (search.py, search_space.py) and one run per strategy
compared side by side (compare.py)."""
