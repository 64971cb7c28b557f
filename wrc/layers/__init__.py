"""Reusable layers shared by upsamplers and objectives (never importing either)."""
