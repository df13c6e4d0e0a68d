"""Datasets (synthetic and MODEST Museum) and the grain input pipeline; knows nothing of models."""
