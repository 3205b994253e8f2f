"""Foundations every stage may import: params (the validated ``params.yaml``), error kinds, atomic writes,
the MLflow tracking store."""
