"""Reading, splitting and batching examples."""
