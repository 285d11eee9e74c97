"""Training: the loop (loop.py) and what it uses: strategies, the automatic strategy choice, resume,
FSDP sharding, adapter checkpoints, the forgetting check and the run's diagnosis. cpu/ holds the CPU
speed-ups of a training step."""
