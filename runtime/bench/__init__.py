"""Benchmarks: glsnet bench (runtime against PyTorch, budgets, RSS timelines) and the batch bench."""
