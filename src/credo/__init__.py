"""credo: reinforcement-learning post-training of language models, one tested part at a time."""

__version__ = "0.1.0"
