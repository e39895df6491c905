"""Downstream tasks: task data, fine-tuning, metrics and baselines."""
