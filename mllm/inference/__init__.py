"""In-context prediction: label scoring, the predictor, shot retrieval, user tables, ``MLLMClassifier``."""

# Rows answered per sequence when the caller does not say (CLI, MLLMClassifier, the served pyfunc model,
# Predictor): as many as the default pipeline trains with (params.yaml encode.max_queries).
DEFAULT_MAX_QUERIES = 10
