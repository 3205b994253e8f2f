"""mllm: teach language models to do machine learning in context."""


def __getattr__(name: str):
    if name == "MLLMClassifier":  # lazy: importing mllm stays light
        from mllm.inference.classifier import MLLMClassifier

        return MLLMClassifier
    raise AttributeError(f"module 'mllm' has no attribute {name!r}")


__all__ = ["MLLMClassifier"]
