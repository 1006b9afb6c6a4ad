"""Training loop, evaluation, checkpoints and logging."""
