"""An MLflow pyfunc model around the predictor, so ``mlflow models serve`` answers requests.

A request is one table: rows whose label column (``label`` unless the model config says otherwise) holds a
value are the context, rows where it is empty are predicted. The response has, per predicted row, the
predicted label and one probability column per class (``proba_<class>``).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from mllm.inference import DEFAULT_MAX_QUERIES
from mllm.model.references import HF_ARTIFACT

PIP_REQUIREMENTS = ["mllm", "torch==2.13.0", "transformers", "peft", "pandas", "scikit-learn"]


class MLLMPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from mllm.model.loading import load_trained_with_tokenizer

        self.model, self.tokenizer = load_trained_with_tokenizer(context.artifacts[HF_ARTIFACT])
        self.config = dict(context.model_config or {})

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return predict_table(self.model, self.tokenizer, pd.DataFrame(model_input), self.config)


def predict_table(model, tokenizer, table: pd.DataFrame, config: dict) -> pd.DataFrame:
    from mllm.inference.predict import PredictionError, Predictor, prediction_frame

    label = config.get("label", "label")
    if label not in table.columns:
        raise PredictionError(f"the request has no {label!r} column (context rows carry the label, rows to "
                              "predict leave it empty)")
    from mllm.inference.table import coerce_numeric

    known = table[label].notna() & (table[label].astype(str) != "")
    # numbers sent as text ("5,120") read as a CSV's do; labels as written (a label column that holds empty
    # cells arrives as floats: 1.0 is the label 1)
    X = coerce_numeric(table.drop(columns=[label]))
    y = table.loc[known, label]
    if pd.api.types.is_float_dtype(y) and (y == y.round()).all():
        y = y.astype("int64")
    pred = Predictor(model, tokenizer, max_queries=int(config.get("max_queries", DEFAULT_MAX_QUERIES)),
                     n_ensemble=int(config.get("n_ensemble", 1)), seed=int(config.get("seed", 0)))
    return prediction_frame(*pred.predict_proba(X[known], y, X[~known]))


def log_pyfunc(model_dir: Path, config: dict):
    """Log the pyfunc model (the HF dir as artifact ``hf``) into the active run; returns the ModelInfo."""
    return mlflow.pyfunc.log_model(
        name="mllm", python_model=str(Path(__file__).with_name("pyfunc_entry.py")), artifacts={HF_ARTIFACT: str(model_dir)},
        model_config={"label": "label", "max_queries": DEFAULT_MAX_QUERIES, "n_ensemble": 1, "seed": 0, **config},
        pip_requirements=PIP_REQUIREMENTS,
    )
