"""Keypoint correspondence: SPair-71k pairs (``spair``) and dense-descriptor matching scored by PCK (``matching``)."""
