"""Evaluation protocols: one module per protocol, each writing one JSON result per run."""
