"""Batch inference: feedback from a model (local actors or an endpoint) for every row of a test set."""
