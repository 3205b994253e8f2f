"""mllm: teach language models to do machine learning in context."""
