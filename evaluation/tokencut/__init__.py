"""TokenCut (Wang et al., CVPR 2022): a normalised cut on a graph of patch features finds the salient object.

ncut.py holds the graph, the two eigen-solvers, the bipartition, the seed's component and its box;
datasets.py the readers of VOC07/VOC12/COCO20k (boxes) and ECSSD/DUTS-TE/DUT-OMRON (masks); metrics.py
box IoU, CorLoc, maxF, IoU and accuracy. The protocols object_discovery and salient
(evaluation/protocols/) run them on any extractor; bilateral_solver.py is the optional mask refinement.
"""
