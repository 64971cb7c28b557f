"""Run wrc.training.train on a JSON config (tests run it as a subprocess, under torchrun for DDP).

With ``--save-state DIR`` every rank writes its final upsampler weights to DIR/rank<R>.pt. A ``{rank}``
in run_dir becomes the process's rank, like the run directories Hydra names on each rank's own clock.
``--die-at-write K`` ends the process abruptly (``os._exit``: no cleanup, as SIGKILL) at the K-th step of
checkpoint writing (a file written into the temporary directory, its rename into place, or the LATEST
pointer's update), so a test can kill a run inside a checkpoint write.
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
parser.add_argument("--die-at-write", type=int, default=None)
args = parser.parse_args()
if args.die_at_write is not None:
    import wrc.checkpoint

    calls = [0]

    def dying(write):
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] == args.die_at_write:
                os._exit(137)
            return write(*a, **k)
        return wrapped

    for name in ("_write_file", "_replace_dir", "atomic_write_text"):
        setattr(wrc.checkpoint, name, dying(getattr(wrc.checkpoint, name)))
config = json.loads(open(args.config).read())
config["run_dir"] = config["run_dir"].replace("{rank}", os.environ.get("RANK", "0"))  # as Hydra names dirs per rank
result = train(config)
if args.save_state:
    torch.save(result.upsampler.state_dict(), os.path.join(args.save_state, f"rank{os.environ.get('RANK', '0')}.pt"))
shutdown_distributed()
