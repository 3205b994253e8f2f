"""The MLflow model registry: registration with a gated ``champion``, manual promotion, the pyfunc model."""
