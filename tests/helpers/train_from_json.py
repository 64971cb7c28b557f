"""Run wrc.training.train on a JSON config (tests run it as a subprocess, under torchrun for DDP).

With ``--save-state DIR`` every rank writes its final upsampler weights to DIR/rank<R>.pt. A ``{rank}``
in run_dir becomes the process's rank, like the run directories Hydra names on each rank's own clock.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from wrc.distributed import shutdown_distributed
from wrc.training import train

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("--save-state", default=None)
args = parser.parse_args()
config = json.loads(open(args.config).read())
config["run_dir"] = config["run_dir"].replace("{rank}", os.environ.get("RANK", "0"))  # as Hydra names dirs per rank
result = train(config)
if args.save_state:
    torch.save(result.upsampler.state_dict(), os.path.join(args.save_state, f"rank{os.environ.get('RANK', '0')}.pt"))
shutdown_distributed()
