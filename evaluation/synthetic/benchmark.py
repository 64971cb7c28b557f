"""The synthetic benchmark: every upsampler against the known ground-truth field of generated scenes.

    python -m evaluation.synthetic                                   # the committed table, CPU minutes
    python -m evaluation.synthetic --methods bilinear lift --steps 100 --out /tmp/synthetic

Setting: 128-pixel scenes (scenes.py) and the oracle backbone (oracle.py, 32 channels, 8-pixel
patches): upsamplers see 16 x 16 tokens and must produce the 128 x 128 field. Learned methods are
trained with their own objective on training scenes, with the same steps, seed, batch and optimiser (the paper's
optimiser where the shared one kills a method's training: OWN_RECIPE); their run directories (``--work-dir``) keep
checkpoints, so an interrupted benchmark resumes where it stopped. Training-free methods run as they are;
"large_image" (the oracle on an 8x larger image) is a reference, not a competitor.

Each method is scored on every task of ``--tasks`` (default all), each task a protocol run on a generated
dataset with known answers, in the real dataset's layout and through the protocol's own code:
- field: the ``synthetic`` protocol (evaluation/protocols/synthetic.py: cosine, rel_l2, cosine_2x, probe miou
  and boundary_f against the oracle's field on held-out scenes);
- video: ``davis`` on generated videos whose shapes move and deform (evaluation/synthetic/videos.py), J&F;
- keypoints: ``spair`` on scene pairs related by known affine warps with occlusion (keypoints.py), PCK;
- discovery: ``object_discovery`` (CorLoc) and salient: ``salient`` (maxF, IoU), on scenes with one salient
  object on clutter (discovery.py).
The row "ground_truth" (the oracle's own field) is each task's ceiling. A method's record is written as soon as
it is scored: ``--out/<name>.json`` for the field task, ``--out/<protocol>/<name>.json`` for the others, and
each task's table to ``--out/<protocol>.md`` and ``.csv`` (``python -m evaluation.tables <protocol> <out>``
rebuilds it). A killed benchmark rerun with the same command trains nothing twice and rescoring is cheap.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from evaluation.protocol import evaluate, get_protocol
from evaluation.protocols.synthetic import PARTIAL, GroundTruth, SyntheticSettings
from evaluation.run_identity import StaleRunError
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import SyntheticScenes
from evaluation.tables import write_table
from wrc.arguments import positive_int, positive_multiple_of
from wrc.checkpoint import latest_checkpoint
from wrc.extractor import DenseFeatureExtractor
from wrc.objectives import create_objective
from wrc.provenance import environment
from wrc.upsamplers import Upsampler, create_upsampler

log = logging.getLogger("wrc")
scene_size = positive_multiple_of(16, "twice the oracle's patch")  # the --image-size type of every synthetic script

MULTIVIEW = {"name": "featup_multiview"}
WRC_MODEL = {"image_channels": 32, "feature_skip": True, "kernel_size": 2}
TRAINED: dict[str, tuple[dict, dict]] = {  # name: (model config, its own objective)
    "wrc": ({"name": "wrc", **WRC_MODEL}, {"name": "wrc_multicrop"}),
    "converse2d": ({"name": "converse2d", **WRC_MODEL}, {"name": "wrc_multicrop"}),
    "wrc_tconv": ({"name": "wrc_tconv", "image_channels": 32, "feature_skip": True}, {"name": "wrc_multicrop"}),
    # the paper's network, whose solve only lifts inner features (the Table 3 ablation without the output solve)
    "wrc_paper_network": ({"name": "wrc", **WRC_MODEL, "output_solve": False}, {"name": "wrc_multicrop"}),
    "converse2d_paper_network": ({"name": "converse2d", **WRC_MODEL, "output_solve": False},
                                 {"name": "wrc_multicrop"}),
    "lift": ({"name": "lift", "image_channels": 32}, {"name": "lift_multiscale", "jitter": {}}),
    "featup_jbu": ({"name": "featup_jbu"}, MULTIVIEW),  # its default: the paper preset (the original's pooling)
    # antialiased guidance and final resize, the former default, beside it (wrc/upsamplers/featup_jbu.py)
    "featup_jbu_antialiased": ({"name": "featup_jbu", "preset": "antialiased"}, MULTIVIEW),
    # today's attention upsamplers, each with its own objective (the recipes' resolutions scaled to the scenes)
    "jafar": ({"name": "jafar"}, {"name": "jafar_lowres"}),
    "anyup": ({"name": "anyup"}, {"name": "anyup_crops"}),
    # NAF trains at 2x from the half-size scene: 8 x 8 tokens, fewer than its 9 x 9 window (a stated deviation)
    "naf": ({"name": "naf", "kernel": 7}, {"name": "naf_downscale"}),
    "uplift": ({"name": "uplift"}, {"name": "uplift_multidepth"}),
    # LoftUp's stage 1 with its mask term on, the scenes' regions in the role of SA-1B's SAM masks (its paper's run)
    "loftup": ({"name": "loftup"}, {"name": "loftup_stage1", "mask_weight": 1.0}),
    # both of LoftUp's stages: stage 2 (EMA-teacher self-distillation, masks refining the teacher) from the stage-1 run
    # (STARTS_FROM) on larger scenes (LARGER_SCENES). A deviation: crop offsets on an 8-px lattice where LoftUp's are
    # on 16 px, so that every crop starts on the oracle's token grid (its patch is 8 px) as LoftUp's start near it
    "loftup_2stages": ({"name": "loftup"}, {"name": "loftup_stage2", "mask_weight": 1.0, "crop_align": 8}),
    "resize_conv": ({"name": "resize_conv"}, MULTIVIEW),
    "transposed_conv": ({"name": "transposed_conv"}, MULTIVIEW),
}
# How each paper uses its method, where that differs from "as many native steps as fit, then interpolate", and
# rows that reuse a trained run at another use: benchmarks/results/synthetic/lift_regime.md measured why.
NATIVE_STEPS = {"lift": 1}  # LiFT's paper: one 2x step, then bilinear to the pixel grid
USES: dict[str, tuple[str, int, str]] = {  # row: (trained run it reuses, native steps, the label's note)
    "lift_2steps": ("lift", 2, "two chained steps: LiFT Table 8"),
    "lift_3steps": ("lift", 3, "three chained steps to 8x: outside the paper's regime"),
}
# Rows whose training starts from another row's finished run (the objective's init_from): LoftUp's stage 2 from stage 1
STARTS_FROM = {"loftup_2stages": "loftup"}
# Rows trained on scenes larger than --image-size: (factor, the objective's sizes as shares of the scene). LoftUp's
# stage 2 trains on images 4x its stage 1's (896 vs 224 px) at student sizes 224 ... 518 of them; here on scenes 2x
# (4x would cost 30x stage 1's attention on a CPU) at the same shares, rounded to the oracle's patch (four distinct
# sizes from --image-size 64 up; smaller scenes merge some)
LARGER_SCENES = {"loftup_2stages": (2, (0.25, 0.375, 0.5, 0.578))}
MIN_STEPS = {"lift": 1000}  # no skip path (starts from random output): at 200 steps it loses to bilinear on its own
# training pairs; at 1000 it beats bilinear at 2x (lift_regime.md)
# Methods whose training dies under the shared optimiser train with their paper's (its experiment config): UPLiFT's
# softmax over 17 offsets saturates on the centre offset within 50 steps at lr 2e-3 with warm-up and cosine decay
# (max weight 0.99999, gradient norm < 1e-3 from then on: output = nearest, whatever the pyramid depth), barely
# survives at 1e-3 under the same schedule, and learns with its recipe: Adam at a constant 1e-3, no weight decay or
# clipping (config/experiment/uplift.yaml). Its own loss on the 32 held-out scenes after 200 steps: 0.1745, against
# nearest's 0.1823 (= the collapsed run's) and bilinear's 0.1876 (synthetic.md's notes).
# LoftUp (4.3 M parameters, an output that is a learned transform, not a mix of tokens) trains with its stage-1
# recipe too, AdamW without decay at a constant 1e-4 (config/experiment/loftup_stage1.yaml): after 200 steps its field
# cosine is 0.30 under the shared optimiser without masks, 0.52 with its recipe and masks, far from its own budget.
OWN_RECIPE: dict[str, dict[str, dict[str, Any]]] = {
    "uplift": {"optimizer": {"lr": 1e-3, "weight_decay": 0.0, "scheduler": "constant", "warmup_steps": 0},
               "train": {"grad_clip": 0.0}},
    "loftup": {"optimizer": {"lr": 1e-4, "weight_decay": 0.0, "scheduler": "constant", "warmup_steps": 10},
               "train": {"grad_clip": 0.0}},
    # LoftUp's stage 2 (config/experiment/loftup_stage2.yaml): AdamW at a constant 1e-3, decay 0.01, no clipping
    "loftup_2stages": {"optimizer": {"lr": 1e-3, "weight_decay": 0.01, "scheduler": "constant", "warmup_steps": 0},
                       "train": {"grad_clip": 0.0}},
}
# A method's own budget (FeatUp's fitting steps per image; LoftUp's stage-1 steps, one epoch of SA-1B-1M at batch 8):
# a row below it is labelled under budget and never ranked
OWN_BUDGET = {"featup_implicit": 1200, "loftup": 125_000, "loftup_2stages": 125_000}  # the last: stage 2's steps
# Trained rows that are not results yet, with why (benchmarks/results/synthetic/synthetic.md's notes): shown, labelled,
# never ranked, until the cause is found
NOT_YET_RESULTS: dict[str, str] = {}
TASKS: dict[str, tuple[str, dict[str, Any]]] = {  # task: (protocol, its settings on the generated dataset)
    "field": ("synthetic", {}),  # from the command line (settings_of)
    "video": ("davis", {"dataset": "synthetic", "image_size": 128}),  # 128-px frames, not resampled
    "keypoints": ("spair", {"dataset": "synthetic"}),
    "discovery": ("object_discovery", {"dataset": "synthetic"}),
    "salient": ("salient", {"dataset": "synthetic"}),
}
TRAINING_FREE: dict[str, dict] = {  # name: kwargs ("name" selects another registered upsampler than the row's)
    "nearest": {}, "bilinear": {}, "bicubic": {}, "srt": {"max_shift": 3},
    "srt_paper": {"name": "srt", "max_shift": 3, "preset": "paper"},  # the original's aggregate (srt.py)
    "strided": {}, "featup_implicit": {"num_jitters": 64, "progress": False}, "large_image": {},
    "upsample_anything": {},
}
def training_config(model: dict, objective: dict, *, steps: int, image_size: int, batch_size: int, lr: float,
                    seed: int, device: str, run_dir: Path) -> dict[str, Any]:
    """A complete ``wrc.training.train`` config; the backbone and dataset are passed to it directly."""
    return {
        "seed": seed, "device": device, "precision": "fp32", "run_dir": str(run_dir),
        "resume": "auto",  # continue an interrupted training, start the others
        "train": {"max_steps": steps, "log_every": max(1, steps // 10), "ckpt_every": max(1, steps // 4),
                  "keep_checkpoints": 1, "grad_clip": 1.0},
        "logger": {}, "model": model, "objective": objective, "backbone": {"name": "synthetic_oracle"},
        "data": {"name": "synthetic_scenes", "image_size": image_size, "batch_size": batch_size, "num_workers": 0},
        "optimizer": {"name": "adamw", "lr": lr, "weight_decay": 1e-4, "scheduler": "cosine",
                      "warmup_steps": max(1, steps // 10), "min_lr_ratio": 0.01},
    }


def train_method(name: str, oracle: OracleBackbone, args: argparse.Namespace) -> tuple[Upsampler, float | None]:
    """Train ``name`` with its own objective (or resume its run); returns (upsampler in eval mode, seconds of
    training in this call, None when the run had already finished). A row that starts from another row's run
    (STARTS_FROM) trains that run first and counts its seconds too; LARGER_SCENES sets its scenes and sizes."""
    from wrc.training import train

    model, objective = TRAINED[name]
    earlier_seconds = None
    if name in STARTS_FROM:  # the earlier stage first (trained, resumed or found finished)
        _, earlier_seconds = train_method(STARTS_FROM[name], oracle, args)
        objective = {**objective, "init_from": str(run_dir_of(STARTS_FROM[name], args))}
    image_size, sizes = training_scene(name, args, oracle.patch_size)
    objective = {**objective, **sizes}
    steps, run_dir = training_steps(name, args), run_dir_of(name, args)
    config = training_config(model, objective, steps=steps, image_size=image_size,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                             run_dir=run_dir)
    last = latest_checkpoint(run_dir / "checkpoints")
    finished = last is not None and last.name == f"step_{steps:07d}"
    tick = time.perf_counter()
    for group, values in OWN_RECIPE.get(name, {}).items():
        config[group] = {**config[group], **values}
    scenes = SyntheticScenes(args.train_scenes, image_size, masks=has_mask_term(config["objective"]))
    result = train(config, backbone=oracle, dataset=scenes)
    seconds = None if finished else time.perf_counter() - tick
    if earlier_seconds is not None:
        seconds = earlier_seconds + (seconds or 0.0)
    return result.upsampler.eval(), seconds


def training_scene(name: str, args: argparse.Namespace, patch: int) -> tuple[int, dict[str, list[int]]]:
    """(scene size a learned row trains on, the objective's sizes where LARGER_SCENES sets them, else {})."""
    if name not in LARGER_SCENES:
        return args.image_size, {}
    factor, shares = LARGER_SCENES[name]
    size = factor * args.image_size
    return size, {"sizes": sorted({max(1, round(share * size / patch)) * patch for share in shares})}


def run_dir_of(name: str, args: argparse.Namespace) -> Path:
    """A learned method's run directory under ``--work-dir`` (its steps in the name where MIN_STEPS raised them)."""
    steps = training_steps(name, args)
    return Path(args.work_dir) / (name if steps == args.steps else f"{name}_{steps}steps")


def starting_point(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The record's ``starts_from``: the row whose finished run this row's training starts from, and its steps."""
    if name not in STARTS_FROM:
        return {}
    return {"starts_from": {"row": STARTS_FROM[name], "steps": training_steps(STARTS_FROM[name], args)}}


def scene_record(name: str, args: argparse.Namespace, patch: int) -> dict[str, Any]:
    """The record's scene size and objective sizes where they differ from the benchmark's (LARGER_SCENES)."""
    if name not in LARGER_SCENES:
        return {}
    image_size, sizes = training_scene(name, args, patch)
    return {"image_size": image_size, "objective_sizes": sizes["sizes"]}


def has_mask_term(objective: dict[str, Any]) -> bool:
    """Whether an objective config turns a mask term on, as the objective itself says (``uses_masks``: LoftUp's
    weight and share both > 0): the scenes then deliver their regions as its masks, as SA-1B delivers SAM's."""
    return bool(getattr(create_objective(**objective), "uses_masks", False))


def recipe_lr(name: str) -> dict[str, float]:
    """``{"lr": ...}`` where the method's own recipe replaces the shared learning rate (so its record's top-level lr
    is the one it trained with), else nothing."""
    lr = OWN_RECIPE.get(name, {}).get("optimizer", {}).get("lr")
    return {} if lr is None else {"lr": lr}


def training_steps(name: str, args: argparse.Namespace) -> int:
    """``--steps``, or more for a method that is still under-trained there (``MIN_STEPS``)."""
    return max(args.steps, MIN_STEPS.get(name, 0))


def budget_steps(name: str, args: argparse.Namespace) -> int:
    """The steps a row got, in its budget's unit: fitting steps per image for FeatUp-Implicit, else training steps."""
    return args.implicit_steps if name == "featup_implicit" else training_steps(name, args)


def row_label(name: str, args: argparse.Namespace) -> tuple[str, bool]:
    """(label shown in the tables, whether the row may be ranked): reused runs say how they are used, and an
    under-budget row says so and is never ranked."""
    if name in USES:
        return f"{name} ({USES[name][2]})", "outside" not in USES[name][2]
    if name in OWN_BUDGET and budget_steps(name, args) < OWN_BUDGET[name]:
        return f"{name} (under budget: {budget_steps(name, args)} of {OWN_BUDGET[name]} steps)", False
    if name in NOT_YET_RESULTS:
        return f"{name} ({NOT_YET_RESULTS[name]})", False
    return name, True


def upsampler_for(name: str, oracle: OracleBackbone, args: argparse.Namespace) -> tuple[Upsampler, float | None, str]:
    """(upsampler, training seconds, objective name) for a learned or training-free method."""
    if name in USES:  # another use of a trained run: nothing is trained twice
        trained, steps, _ = USES[name]
        upsampler, _ = train_method(trained, oracle, args)
        upsampler.native_steps = steps
        return upsampler, 0.0, TRAINED[trained][1]["name"]
    if name in TRAINED:
        upsampler, seconds = train_method(name, oracle, args)
        upsampler.native_steps = NATIVE_STEPS.get(name)
        return upsampler, seconds, TRAINED[name][1]["name"]
    kwargs = dict(TRAINING_FREE[name])
    method = kwargs.pop("name", name)
    if method == "featup_implicit":
        kwargs["steps"] = args.implicit_steps
    upsampler = create_upsampler(method, oracle.embed_dim, oracle.patch_size, **kwargs)
    return upsampler.to(args.device).eval(), 0.0, "training-free"


def settings_of(args: argparse.Namespace) -> SyntheticSettings:
    return SyntheticSettings(image_size=args.image_size, test_scenes=args.test_scenes,
                             probe_scenes=args.probe_scenes, seed=args.data_seed)


TASK_ITEMS = {  # task: the settings --task-items sets (generated videos, pairs per category, images)
    "video": {"synthetic_sequences": None},
    "keypoints": {"synthetic_pairs": None, "pairs_per_category": "none"},  # every generated pair once
    "discovery": {"synthetic_images": None},
    "salient": {"synthetic_images": None},
}


def task_settings(task: str, args: argparse.Namespace) -> Any:
    """The settings of ``task``'s protocol on its generated dataset (``--task-items`` scales its size)."""
    protocol, settings = TASKS[task]
    if task == "field":
        return settings_of(args)
    settings = {**settings, "seed": args.data_seed}
    if args.task_items is not None:
        settings |= {key: args.task_items if value is None else None for key, value in TASK_ITEMS[task].items()}
    return get_protocol(protocol).settings(settings)


def record_path(task: str, name: str, args: argparse.Namespace) -> Path:
    out = Path(args.out)
    return out / f"{name}.json" if task == "field" else out / TASKS[task][0] / f"{name}.json"


def score(name: str, upsampler: Upsampler, oracle: OracleBackbone, args: argparse.Namespace,
          training: dict[str, Any], label: str | None = None) -> dict[str, dict[str, Any]]:
    """Score one method on every task of ``--tasks``, each record written as soon as it exists; task -> metrics."""
    extractor = DenseFeatureExtractor(oracle, upsampler.to(args.device).eval())
    run_dir = Path(args.work_dir) / name
    metrics = {}
    for task in args.tasks:
        protocol = TASKS[task][0]
        eval_dir = run_dir if task == "field" else run_dir / f"eval_{task}"
        run = partial(evaluate, protocol, extractor, task_settings(task, args), eval_dir,
                      record_path=record_path(task, name, args), label=label or name, training=training)
        try:
            record = run()
        except StaleRunError as err:  # a resume cache of other code or settings: this benchmark owns it, rescore
            stale = run_dir / PARTIAL if task == "field" else eval_dir  # the field's partials, not the training run
            log.info("%s: scored by another run (%s); scoring again", stale, err)
            shutil.rmtree(stale)
            record = run()
        metrics[task] = record.metrics
    return metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    every = [*TRAINED, *USES, *TRAINING_FREE]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=every, choices=every, metavar="NAME",
                        help=f"upsamplers to score (default: all of {', '.join(every)})")
    parser.add_argument("--steps", type=positive_int, default=200, help="training steps of each learned method")
    parser.add_argument("--image-size", type=scene_size, default=128)
    parser.add_argument("--train-scenes", type=positive_int, default=256)
    parser.add_argument("--test-scenes", type=positive_int, default=32)
    parser.add_argument("--probe-scenes", type=positive_int, default=16, help="training scenes each probe is fitted on")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--implicit-steps", type=int, default=30,
                        help="FeatUp-Implicit fitting steps per image (FeatUp: 1200+, a GPU budget)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), metavar="TASK",
                        help=f"tasks to score every method on (default: all of {', '.join(TASKS)})")
    parser.add_argument("--task-items", type=positive_int, default=None, metavar="N",
                        help="generated videos / pairs per category / images of the tasks other than field "
                             "(default: each protocol's own count; small values for tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training runs (and of nothing else)")
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the generated test data: fixed across training seeds, so a spread over seeds "
                             "is the methods' own")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work-dir", default="outputs/synthetic", help="run directories of the learned methods")
    parser.add_argument("--out", default="outputs/synthetic/results", help="result JSONs and the table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    oracle = OracleBackbone().to(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setting = {"steps": args.steps, "train_scenes": args.train_scenes, "batch_size": args.batch_size, "lr": args.lr,
               "implicit_steps": args.implicit_steps, "seed": args.seed}
    score("ground_truth", GroundTruth(oracle.embed_dim, oracle.patch_size), oracle, args,
          {"objective": "-", "train_seconds": 0.0, "parameters": 0, "training": setting})
    for name in args.methods:  # each record is written when done: a killed run keeps the finished methods
        upsampler, seconds, objective = upsampler_for(name, oracle, args)
        trained = USES[name][0] if name in USES else name
        model = TRAINED[trained][0] if trained in TRAINED else {"name": name, **TRAINING_FREE[name]}
        label, ranked = row_label(name, args)
        scores = score(name, upsampler, oracle, args, {
            "objective": objective, "train_seconds": seconds, "model": model, "ranked": ranked,
            "training": {**setting, **recipe_lr(trained), "steps": training_steps(trained, args) if trained in TRAINED
                         else 0, "native_steps": upsampler.native_steps, **OWN_RECIPE.get(trained, {}),
                         **starting_point(trained, args), **scene_record(trained, args, oracle.patch_size)},
            "parameters": sum(p.numel() for p in upsampler.parameters())}, label=label)
        log.info("%-16s %s", name, "  ".join(f"{task} {headline(task, metrics)}" for task, metrics in scores.items()))
    env = environment(torch.device(args.device))
    for task in args.tasks:
        protocol = TASKS[task][0]
        print(f"\n{task} ({protocol})\n" + write_table(out if task == "field" else out / protocol, protocol, env))
    return 0


def headline(task: str, metrics: dict[str, Any]) -> str:
    names = get_protocol(TASKS[task][0]).table.headline
    return " ".join(f"{m} {metrics[m]:.4f}" for m in names if isinstance(metrics.get(m), float))
