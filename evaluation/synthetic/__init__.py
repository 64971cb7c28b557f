"""A benchmark with known ground truth: generated scenes, an oracle backbone, every upsampler scored.

scenes.py generates the scenes, oracle.py the backbone whose per-pixel output is the ground truth,
benchmark.py trains and scores the upsamplers (``python -m evaluation.synthetic``).
"""
