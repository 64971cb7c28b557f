"""Reusable layers shared by several upsamplers."""
