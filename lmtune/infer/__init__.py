"""Inference on a finished run or a model: the Predictor and Generator (predictor.py), generation,
export, reading a run folder (saved_run.py), the checks made before a model is loaded
(preflight.py) and explanations of predictions (explain.py, explain_render.py)."""
