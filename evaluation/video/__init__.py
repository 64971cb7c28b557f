"""Semi-supervised video object segmentation on DAVIS-2017 by label propagation (the DINO / LiFT / WRC protocol).

davis.py reads the dataset layout and writes indexed palette PNGs, propagation.py propagates the first frame's
labels with feature affinities, jf.py scores a results folder with the official J&F definitions; the protocol
that ties them together is evaluation/protocols/davis.py.
"""
