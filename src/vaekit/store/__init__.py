"""A run on disk: its folder and lock (rundir), checkpoints (checkpoint) and metrics.jsonl (metrics)."""
