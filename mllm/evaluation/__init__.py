"""Evaluation on real tables: the suite, the classical baselines, metrics and learning curves."""
