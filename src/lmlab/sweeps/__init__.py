"""Sweeps: declared in experiment files (`get_sweep()` with the helpers of grid.py), expanded into points
with idempotent work directories (points.py), run on submitit by engine.py (workers: worker.py; shared
data and tokenizers: prepare.py), and summarized by `python -m lmlab.report`."""
