"""The pyfunc model as code (MLflow "models from code"): logged as source, not as a pickle, so loading a
registered model runs no serialized code."""

import mlflow

from mllm.registry.pyfunc import MLLMPyfunc

mlflow.models.set_model(MLLMPyfunc())
