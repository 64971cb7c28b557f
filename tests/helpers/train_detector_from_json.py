"""Run evaluation.detection.train.train_detector on a JSON config (a test runs it under torchrun for DDP).

With ``--save-state DIR`` every rank writes its final detector weights to DIR/rank<R>.pt.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from evaluation.detection.train import train_detector
from wrc.distributed import shutdown_distributed

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("--save-state", default=None)
args = parser.parse_args()
try:
    result = train_detector(json.loads(open(args.config).read()))
    if args.save_state:
        state = {k: v.detach().cpu() for k, v in result.detector.state_dict().items()}
        torch.save(state, os.path.join(args.save_state, f"rank{os.environ.get('RANK', '0')}.pt"))
finally:
    shutdown_distributed()
