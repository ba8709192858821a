"""Training: features and model in one pipeline, CV/HPO, evaluation, gates."""
