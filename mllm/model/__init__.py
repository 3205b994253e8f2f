"""Models: loading bases and trained models (and model references), the compiled embedded base, training
data and continued pretraining."""
