"""The CPU speed-ups of a training step: large tensors from the heap, packed dropout masks, the
word-embedding gradient by the rows a batch touched, and a classifier's last layer for its first token."""
