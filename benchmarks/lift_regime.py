"""Why LiFT trails bilinear in the synthetic benchmark, measured; and what FeatUp-Implicit costs at its budget.

    python -m benchmarks.lift_regime --run outputs/synthetic_s0/lift --train-steps 1000 --work-dir outputs/lift_regime

Every trained LiFT (each ``--run``, plus one LiFT trained here with the benchmark's own recipe for each
``--train-steps``) is measured on the benchmark's held-out scenes (evaluation/synthetic):
1. chain: LiFT applied 1, 2 and 3 times (2x, 4x, 8x of the 16 x 16 tokens) against the field averaged to that
   grid: mean per-pixel norm over the target's, cosine, rel_l2, and rel_l2 once each output pixel is rescaled
   to bilinear's norm (what a norm calibration can recover) or by its L2-optimal factor (the floor set by the
   directions alone); bilinear beside it. The same chain with batch statistics in every BatchNorm (train mode).
2. batch norm: the statistics every BatchNorm sees at each chained step against its running statistics
   (mean shift in running standard deviations, std ratio), beside the two pairs LiFT is trained on.
3. own regime: LiFT's training pairs (tokens of x/2 -> tokens of x, x/4 -> x/2) on held-out scenes, LiFT
   against bilinear: does LiFT beat interpolation where it is trained?
4. rows: the synthetic protocol (the benchmark's five metrics) for LiFT as its paper uses it (one step then
   bilinear; two steps then bilinear, Table 8's "2xLiFT"), the benchmark's three steps, and three steps with
   each step's output rescaled to bilinear's per-pixel norm (a labelled calibration, not the paper's).
5. FeatUp-Implicit: CPU seconds per fitting step and per jittered view at the benchmark's size (one scene, the
   benchmark's settings), scaled to the benchmark's 30 steps and to FeatUp's 1200 steps / 3000 views.
6. seeds: minutes of the learned methods' training in ``--cost-dir`` (the benchmark's work directory) and of
   the runs trained here, from their logged throughput: what one more seed of every learned method costs.
Writes benchmarks/results/synthetic/lift_regime.{md,json} (``--name`` changes the name).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import publish
from evaluation.protocol import get_protocol
from evaluation.protocols.synthetic import SyntheticSettings
from evaluation.synthetic.benchmark import TRAINED, TRAINING_FREE, scene_size, training_config
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import SyntheticScenes
from wrc import load_upsampler
from wrc.arguments import integer_at_least, positive_int
from wrc.extractor import DenseFeatureExtractor
from wrc.objectives.lift_multiscale import downscale
from wrc.upsamplers import Upsampler, create_upsampler
from wrc.upsamplers.base import resize

FEATUP_STEPS, FEATUP_VIEWS = 1200, 3000  # FeatUp's implicit fit (shared/reference/featup.md, section 5.3)
LEVELS = (1, 2, 3)  # chained LiFT steps: 2x, 4x, 8x of the token grid


def best_scale(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``x`` with each pixel scaled by the factor closest to ``target`` in L2 (its projection on ``x``): what
    remains of rel_l2 after any per-pixel magnitude correction, the error of the directions alone."""
    return x * ((x * target).sum(dim=1, keepdim=True) / x.square().sum(dim=1, keepdim=True).clamp_min(1e-12))


def match_norm(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``x`` with each pixel's feature vector rescaled to the norm of ``reference``'s (directions unchanged)."""
    return x * (reference.norm(dim=1, keepdim=True) / x.norm(dim=1, keepdim=True).clamp_min(1e-12))


class LiftUse(Upsampler):
    """A trained LiFT used a given way: at most ``steps`` chained 2x steps, then bilinear to the requested size;
    ``calibrate`` rescales every step's output to the per-pixel norm of bilinear interpolation of the tokens."""

    name, trainable = "lift_use", False

    def __init__(self, lift: Upsampler, steps: int, calibrate: bool = False) -> None:
        super().__init__(lift.in_channels, lift.patch_size)
        self.lift, self.steps, self.calibrate = lift, steps, calibrate

    def upsample_to(self, features: torch.Tensor, image: torch.Tensor, size: tuple[int, int],
                    backbone: nn.Module | None) -> torch.Tensor:
        out = features
        for _ in range(self.steps):
            if 2 * out.shape[-2] > size[0] or 2 * out.shape[-1] > size[1]:
                break
            out = self.lift.upsample_step(out, image)
            if self.calibrate:
                out = match_norm(out, resize(features, out.shape[-2:]))
        return resize(out, size)


def scene_batches(oracle: OracleBackbone, scenes: int, image_size: int, batch_size: int = 8
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(images, tokens, field) per batch of the benchmark's held-out scenes."""
    test = SyntheticScenes(scenes, image_size, train=False)
    for start in range(0, scenes, batch_size):
        images = torch.stack([test.scene(i).image for i in range(start, min(start + batch_size, scenes))])
        yield images, oracle(images), oracle.dense(images)


class Sums:
    """Running sums of per-image metrics and of per-pixel norms; ``mean()`` gives the averages."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.count = 0

    def add(self, pred: torch.Tensor, target: torch.Tensor, **extra: torch.Tensor) -> None:
        terms = {"norm_ratio": pred.norm(dim=1).mean(dim=(1, 2)) / target.norm(dim=1).mean(dim=(1, 2)),
                 "cosine": F.cosine_similarity(pred, target, dim=1).mean(dim=(1, 2)),
                 "rel_l2": rel_l2(pred, target), **extra}
        for key, value in terms.items():
            self.values[key] = self.values.get(key, 0.0) + float(value.sum())
        self.count += pred.shape[0]

    def mean(self) -> dict[str, float]:
        return {key: value / self.count for key, value in self.values.items()}


def rel_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) ||pred - target|| / ||target|| over each map (the protocol's rel_l2)."""
    return (pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)


@torch.no_grad()
def chain(lift: Upsampler, oracle: OracleBackbone, scenes: int, image_size: int, batch_stats: bool = False
          ) -> list[dict[str, Any]]:
    """Per chained step: LiFT's and bilinear's norm ratio, cosine and rel_l2 against the field averaged to that
    grid (and LiFT's rel_l2 after norm matching); ``batch_stats`` runs BatchNorm in train mode, on a copy."""
    if batch_stats:
        lift = copy.deepcopy(lift).train()
    sums = {(level, who): Sums() for level in LEVELS for who in ("lift", "bilinear")}
    for images, tokens, field in scene_batches(oracle, scenes, image_size):
        out = tokens
        for level in LEVELS:
            out = lift.upsample_step(out, images)
            target = F.adaptive_avg_pool2d(field, out.shape[-2:])
            bilinear = resize(tokens, out.shape[-2:])
            sums[level, "lift"].add(out, target, rel_l2_bilinear_norm=rel_l2(match_norm(out, bilinear), target),
                                    rel_l2_best_scale=rel_l2(best_scale(out, target), target))
            sums[level, "bilinear"].add(bilinear, target)
    return [{"level": f"{2 ** level}x", "steps": level, "lift": sums[level, "lift"].mean(),
             "bilinear": sums[level, "bilinear"].mean()} for level in LEVELS]


def norm_gains(rows: list[dict[str, Any]], token_ratio: float) -> list[float]:
    """How much each step multiplies the norm ratio (the first step against the tokens' own ratio)."""
    ratios = [token_ratio] + [row["lift"]["norm_ratio"] for row in rows]
    return [b / a for a, b in zip(ratios, ratios[1:], strict=False)]


@torch.no_grad()
def token_norm_ratio(oracle: OracleBackbone, scenes: int, image_size: int) -> float:
    """Mean token norm over the mean norm of the field averaged to the token grid (mixing shrinks it)."""
    sums = Sums()
    for _, tokens, field in scene_batches(oracle, scenes, image_size):
        sums.add(tokens, F.adaptive_avg_pool2d(field, tokens.shape[-2:]))
    return sums.mean()["norm_ratio"]


@torch.no_grad()
def batchnorm_shift(lift: Upsampler, oracle: OracleBackbone, scenes: int, image_size: int) -> list[dict[str, Any]]:
    """For the two training pairs and each chained step: per BatchNorm group (image branch, fusion), the largest
    mean shift |batch mean - running mean| / running std and mean std ratio over its layers."""
    groups = {name: module for name, module in lift.named_modules() if isinstance(module, nn.BatchNorm2d)}
    seen: dict[str, list[tuple[float, float]]] = {}

    def hook(name: str):
        def record(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor], _: torch.Tensor) -> None:
            x = inputs[0].transpose(0, 1).flatten(1)  # C, N*H*W
            std = (module.running_var + module.eps).sqrt()
            shift = ((x.mean(dim=1) - module.running_mean).abs() / std).mean()
            seen.setdefault(name, []).append((float(shift), float((x.std(dim=1) / std).mean())))
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in groups.items()]
    stages: dict[str, list] = {}
    try:
        for images, tokens, _ in scene_batches(oracle, scenes, image_size):
            runs = [(f"train pair x/{2 * k} -> x/{k}".replace("x/1", "x"), downscale(images, 2 * k))
                    for k in (1, 2)]
            for label, source in runs:  # what the running statistics were accumulated on
                seen.clear()
                lift.upsample_step(oracle(source), source)
                stages.setdefault(label, []).append(dict(seen))
            out = tokens
            for level in LEVELS:
                seen.clear()
                out = lift.upsample_step(out, images)
                stages.setdefault(f"chained step {level} ({2 ** level}x)", []).append(dict(seen))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for label, batches in stages.items():
        row: dict[str, Any] = {"stage": label}
        for group, prefix in (("image", ("image_",)), ("fusion", ("fuse",))):
            names = [name for name in groups if name.startswith(prefix)]
            shifts = [sum(b[n][0][0] for b in batches) / len(batches) for n in names]
            ratios = [sum(b[n][0][1] for b in batches) / len(batches) for n in names]
            row[group] = {"max_mean_shift": max(shifts), "mean_std_ratio": sum(ratios) / len(ratios)}
        rows.append(row)
    return rows


@torch.no_grad()
def own_regime(lift: Upsampler, oracle: OracleBackbone, scenes: int, image_size: int) -> list[dict[str, Any]]:
    """LiFT's two training pairs on held-out scenes (no jitter): LiFT and bilinear against the backbone's tokens
    of the image one scale up."""
    bilinear = create_upsampler("bilinear", oracle.embed_dim, oracle.patch_size)
    sums = {(k, who): Sums() for k in (1, 2) for who in ("lift", "bilinear")}
    for images, _, _ in scene_batches(oracle, scenes, image_size):
        for k in (1, 2):  # x/2 -> x, then x/4 -> x/2
            target_image, source = downscale(images, k) if k > 1 else images, downscale(images, 2 * k)
            target, tokens = oracle(target_image), oracle(source)
            for who, method in (("lift", lift), ("bilinear", bilinear)):
                sums[k, who].add(method(tokens, source, output_size=target.shape[-2:]), target)
    return [{"pair": f"x/{2 * k} -> x/{k}".replace("x/1", "x"), "lift": sums[k, "lift"].mean(),
             "bilinear": sums[k, "bilinear"].mean()} for k in (1, 2)]


def protocol_rows(lift: Upsampler, oracle: OracleBackbone, settings: SyntheticSettings
                  ) -> dict[str, dict[str, float]]:
    """The synthetic protocol's metrics for each way of using ``lift`` (and bilinear, the reference)."""
    uses = {"1 step + bilinear (paper: LiFT)": LiftUse(lift, 1), "2 steps + bilinear (paper: 2xLiFT)": LiftUse(lift, 2),
            "3 steps (benchmark row)": LiftUse(lift, 3),
            "3 steps, norm-calibrated": LiftUse(lift, 3, calibrate=True)}
    protocol = get_protocol("synthetic")
    rows = {}
    for label, upsampler in uses.items():
        metrics = score_field(DenseFeatureExtractor(oracle, upsampler).eval(), settings)
        rows[label] = {key: metrics[key] for key in protocol.table.headline}
    return rows


def score_field(extractor: DenseFeatureExtractor, settings: SyntheticSettings) -> dict[str, float]:
    """The synthetic protocol's metrics, in a scratch run directory: the uses of one LiFT share its weights, so
    they must never share the protocol's resume state."""
    with tempfile.TemporaryDirectory(prefix="lift_regime_") as scratch:
        return get_protocol("synthetic").run(extractor, settings, Path(scratch)).metrics


def implicit_cost(oracle: OracleBackbone, image_size: int, steps: int, benchmark_steps: int,
                  views: int | None = None) -> dict[str, float]:
    """Seconds of FeatUp-Implicit at the benchmark's settings on one scene, per step and per jittered view: CPU
    time of this process (a fit of 1 + ``steps`` steps minus one of 1 step), robust to other load on the machine,
    and the wall time the fit itself records; then scaled to the benchmark's and to FeatUp's budget."""
    kwargs = {key: value for key, value in TRAINING_FREE["featup_implicit"].items() if key != "name"}
    if views is not None:
        kwargs["num_jitters"] = views
    image = SyntheticScenes(1, image_size, train=False).scene(0).image[None]
    cpu, wall = [], []
    for n in (1, 1 + steps):  # another step count is another cache key: both fit from scratch
        upsampler = create_upsampler("featup_implicit", oracle.embed_dim, oracle.patch_size, **kwargs, steps=n)
        tick = time.process_time()
        wall.append(upsampler.fit(oracle(image), image, oracle).seconds)
        cpu.append(time.process_time() - tick)
    views = upsampler.settings["num_jitters"]
    per_step = (cpu[1] - cpu[0]) / steps
    per_view = max(cpu[0] - per_step, 0.0) / views
    cost = {"image_size": image_size, "views": views, "benchmark_steps": benchmark_steps, "timed_steps": steps,
            "cpu_seconds_per_step": per_step,
            "cpu_seconds_per_view": per_view, "wall_seconds_per_step": wall[1]["steps"] / (1 + steps),
            "wall_seconds_per_view": wall[1]["views"] / views, "threads": torch.get_num_threads()}
    budgets = {"benchmark": (benchmark_steps, views), "featup_steps": (FEATUP_STEPS, views),
               "featup": (FEATUP_STEPS, FEATUP_VIEWS)}
    for name, (n_steps, n_views) in budgets.items():
        cost[f"cpu_seconds_per_image_{name}"] = n_steps * per_step + n_views * per_view
    return cost


def logged_minutes(run_dir: Path) -> float | None:
    """Minutes a training run took, from the throughput its log records (None without a log)."""
    log_file = run_dir / "metrics.jsonl"
    if not log_file.exists():
        return None
    batch = json.loads((run_dir / "config.json").read_text())["data"]["batch_size"]
    last, seconds = 0, 0.0
    for line in log_file.read_text().splitlines():
        if line.strip():  # images_per_s is measured over the steps since the previous log line
            row = json.loads(line)
            seconds += (row["step"] - last) * batch / row["images_per_s"]
            last = row["step"]
    return seconds / 60


def training_minutes(cost_dir: Path) -> dict[str, float]:
    """Minutes of each learned method's training in ``cost_dir`` (the benchmark's work directory)."""
    minutes = {name: logged_minutes(cost_dir / name) for name in TRAINED}
    return {name: value for name, value in minutes.items() if value is not None}


def train_lift(run_dir: Path, steps: int, seed: int = 0, train_scenes: int = 256, image_size: int = 128,
               batch_size: int = 8, lr: float = 2e-3) -> Upsampler:
    """LiFT trained exactly as ``python -m evaluation.synthetic`` trains it, for ``steps`` (resumes a run)."""
    from wrc.training import train

    model, objective = TRAINED["lift"]
    config = training_config(model, objective, steps=steps, image_size=image_size, batch_size=batch_size, lr=lr,
                             seed=seed, device="cpu", run_dir=Path(run_dir))
    dataset = SyntheticScenes(train_scenes, image_size)
    return train(config, backbone=OracleBackbone(), dataset=dataset).upsampler.eval()


def run_steps(run: Path) -> int | None:
    config = run / "config.json"
    return json.loads(config.read_text())["train"]["max_steps"] if config.exists() else None


def measure(label: str, lift: Upsampler, oracle: OracleBackbone, args: argparse.Namespace,
            token_ratio: float) -> dict[str, Any]:
    settings = SyntheticSettings(image_size=args.image_size, test_scenes=args.test_scenes,
                                 probe_scenes=args.probe_scenes)
    rows = chain(lift, oracle, args.test_scenes, args.image_size)
    return {"run": label, "chain": rows, "norm_gain_per_step": norm_gains(rows, token_ratio),
            "chain_batch_stats": chain(lift, oracle, args.test_scenes, args.image_size, batch_stats=True),
            "batchnorm": batchnorm_shift(lift, oracle, args.test_scenes, args.image_size),
            "own_regime": own_regime(lift, oracle, args.test_scenes, args.image_size),
            "protocol": protocol_rows(lift, oracle, settings)}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1),
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def metric_cells(m: dict[str, float]) -> list[str]:
    return [f"{m['norm_ratio']:.2f}", f"{m['cosine']:.4f}", f"{m['rel_l2']:.3f}"]


def report(results: list[dict[str, Any]], bilinear: dict[str, float], implicit: dict[str, float] | None,
           minutes: dict[str, float]) -> list[str]:
    """The Markdown tables of every measurement (the findings are written beside them by hand)."""
    lines = []
    for r in results:
        lines += [f"## {r['run']}", "",
                  "Chain, eval-mode BatchNorm (target: the field averaged to the grid; norm: mean per-pixel norm over "
                  "the target's; rel_l2 @ bilinear norm: each output pixel rescaled to bilinear's norm first; "
                  "@ best scale: each pixel scaled by its L2-optimal factor, the error of the directions alone); "
                  "last three columns: the chain with batch statistics (BatchNorm in train mode):", ""]
        lines += table(["grid", "LiFT norm", "cosine", "rel_l2", "rel_l2 @ bilinear norm", "rel_l2 @ best scale",
                        "bilinear norm", "cosine", "rel_l2", "batch-stats norm", "cosine", "rel_l2"],
                       [[row["level"], *metric_cells(row["lift"]), f"{row['lift']['rel_l2_bilinear_norm']:.3f}",
                         f"{row['lift']['rel_l2_best_scale']:.3f}", *metric_cells(row["bilinear"]),
                         *metric_cells(batch["lift"])]
                        for row, batch in zip(r["chain"], r["chain_batch_stats"], strict=True)])
        gains = ", ".join(f"{g:.2f}" for g in r["norm_gain_per_step"])
        lines += [f"Norm ratio multiplied by each step (1, 2, 3): {gains}.", "",
                  "BatchNorm inputs against the running statistics (shift: the largest over a group's layers of the "
                  "mean |batch mean - running mean| / running std; std ratio: batch std / running std, mean):", ""]
        lines += table(["stage", "image-branch shift", "std ratio", "fusion shift", "std ratio"],
                       [[row["stage"], f"{row['image']['max_mean_shift']:.2f}", f"{row['image']['mean_std_ratio']:.2f}",
                         f"{row['fusion']['max_mean_shift']:.2f}", f"{row['fusion']['mean_std_ratio']:.2f}"]
                        for row in r["batchnorm"]])
        lines += ["Own regime (LiFT's two training pairs on held-out scenes; target: the tokens one scale up):", ""]
        lines += table(["pair", "LiFT norm", "cosine", "rel_l2", "bilinear norm", "cosine", "rel_l2"],
                       [[row["pair"], *metric_cells(row["lift"]), *metric_cells(row["bilinear"])]
                        for row in r["own_regime"]])
        lines += ["Synthetic protocol (the benchmark's metrics, the same held-out scenes):", ""]
        lines += table(["use", "cosine", "rel_l2", "cosine_2x", "miou", "boundary_f"],
                       [[label, *(f"{m[key]:.4f}" for key in ("cosine", "rel_l2", "cosine_2x", "miou", "boundary_f"))]
                        for label, m in {**r["protocol"], "bilinear (reference)": bilinear}.items()])
    if implicit:
        i = implicit
        lines += ["## FeatUp-Implicit cost", "",
                  f"One {i['image_size']}-px scene on the oracle, the benchmark's settings ({i['views']} views), "
                  f"{i['timed_steps']} steps timed, {i['threads']} thread(s): "
                  f"{i['cpu_seconds_per_step']:.3f} CPU s per step and {i['cpu_seconds_per_view'] * 1e3:.1f} CPU ms "
                  "per view (wall, as the fit records it under the machine's load: "
                  f"{i['wall_seconds_per_step']:.3f} s and {i['wall_seconds_per_view'] * 1e3:.1f} ms).", ""]
        lines += table(["budget", "CPU s per image"], [
            [f"benchmark ({i['benchmark_steps']} steps, {i['views']} views)",
             f"{i['cpu_seconds_per_image_benchmark']:.1f}"],
            [f"FeatUp's steps ({FEATUP_STEPS} steps, {i['views']} views)",
             f"{i['cpu_seconds_per_image_featup_steps']:.0f}"],
            [f"FeatUp's budget ({FEATUP_STEPS} steps, {FEATUP_VIEWS} views)",
             f"{i['cpu_seconds_per_image_featup']:.0f}"]])
    if minutes:
        lines += ["## Training cost of one seed (wall minutes from the logged throughput, under that run's load)", ""]
        lines += table(["method", "minutes"], [[name, f"{value:.1f}"] for name, value in minutes.items()]
                       + [["all learned (the benchmark's runs)",
                           f"{sum(v for k, v in minutes.items() if k in TRAINED):.1f}"]])
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs="*", default=[], help="trained LiFT run directories (or checkpoints)")
    parser.add_argument("--train-steps", type=positive_int, nargs="*", default=[],
                        help="also train LiFT with the benchmark's recipe for these step counts (in --work-dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LiFT runs trained here")
    parser.add_argument("--work-dir", default="outputs/lift_regime")
    parser.add_argument("--image-size", type=scene_size, default=128)
    parser.add_argument("--train-scenes", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="training batch of the LiFT runs trained here")
    parser.add_argument("--test-scenes", type=positive_int, default=32)
    parser.add_argument("--probe-scenes", type=positive_int, default=16)
    parser.add_argument("--implicit-steps", type=integer_at_least(0), default=5,
                        help="FeatUp-Implicit steps timed (0: skip)")
    parser.add_argument("--implicit-views", type=int, default=None, help="jittered views (default: the benchmark's)")
    parser.add_argument("--benchmark-implicit-steps", type=int, default=30)
    parser.add_argument("--cost-dir", default="outputs/synthetic_s0", help="the benchmark's work directory")
    parser.add_argument("--name", default="synthetic/lift_regime", help="results name under benchmarks/results")
    args = parser.parse_args(argv)
    if not args.run and not args.train_steps:
        parser.error("give at least one --run or --train-steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    oracle = OracleBackbone()
    runs = [(f"{path} ({run_steps(Path(path))} steps)", load_upsampler(path)) for path in args.run]
    for steps in args.train_steps:
        run_dir = Path(args.work_dir) / f"lift_steps{steps}_s{args.seed}"
        lift = train_lift(run_dir, steps, args.seed, args.train_scenes, args.image_size, args.batch_size)
        runs.append((f"{run_dir} ({steps} steps, trained here)", lift))
    token_ratio = token_norm_ratio(oracle, args.test_scenes, args.image_size)
    results = []
    for label, lift in runs:
        results.append(measure(label, lift.eval(), oracle, args, token_ratio))
        print(json.dumps({"run": label, "protocol": results[-1]["protocol"]}), flush=True)
    settings = SyntheticSettings(image_size=args.image_size, test_scenes=args.test_scenes,
                                 probe_scenes=args.probe_scenes)
    bilinear = create_upsampler("bilinear", oracle.embed_dim, oracle.patch_size)
    metrics = score_field(DenseFeatureExtractor(oracle, bilinear).eval(), settings)
    bilinear_row = {key: metrics[key] for key in get_protocol("synthetic").table.headline}
    implicit = (implicit_cost(oracle, args.image_size, args.implicit_steps, args.benchmark_implicit_steps,
                              args.implicit_views)
                if args.implicit_steps else None)
    minutes = training_minutes(Path(args.cost_dir))
    for steps in args.train_steps:
        here = logged_minutes(Path(args.work_dir) / f"lift_steps{steps}_s{args.seed}")
        if here is not None:
            minutes[f"lift, {steps} steps (trained here)"] = here
    lines = report(results, bilinear_row, implicit, minutes)
    setting = {key: getattr(args, key) for key in ("image_size", "train_scenes", "batch_size", "test_scenes",
                                                   "probe_scenes", "seed")}
    publish(args.name, torch.device("cpu"), results, lines, setting=setting, token_norm_ratio=token_ratio,
            bilinear=bilinear_row, featup_implicit=implicit, training_minutes=minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
