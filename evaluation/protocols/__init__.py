"""Evaluation protocols, one module each; the registry (evaluation.protocol.PROTOCOLS) imports every module here."""
