"""A benchmark with known ground truth: generated scenes, an oracle backbone, every upsampler scored.

scenes.py generates the scenes, oracle.py the backbone whose per-pixel output is the ground truth; videos.py,
keypoints.py and discovery.py write the dense tasks' generated datasets in the DAVIS, SPair and VOC / ECSSD
layouts; benchmark.py trains and scores the upsamplers on every task (``python -m evaluation.synthetic``).
"""
