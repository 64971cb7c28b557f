"""The synthetic benchmark over training seeds: mean and spread per method, and only the ranking claims they carry.

    python -m evaluation.synthetic.seeds benchmarks/results/synthetic benchmarks/results/synthetic_seed1 \\
        benchmarks/results/synthetic_seed2 --out benchmarks/results/synthetic/seeds

Each folder holds one training seed's records (``python -m evaluation.synthetic --seed S --out <folder>``), all on
the same generated test data and probe initialisation (``--data-seed``), so the spread is the methods' own:
initialisation, data order and augmentation (a training-free method has none). Per method, task and metric: the mean
and the sample standard deviation over the seeds that scored it (n). A claim "A beats B on m" is made only where
both have the same n >= 2 seeds, both rows are ranked (not under budget, not outside the paper's regime, not a
reference: ground_truth, large_image), and the gap of the means exceeds twice the larger of the two spreads; it is
marked "in every seed" where A also beats B in each seed separately (the claims the CI ranking test may assert). The
folders' own tables (``<folder>/<protocol>.md``) stay one seed each.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from evaluation.protocol import get_protocol
from evaluation.records import ResultRecord, read_record

FIELD = "synthetic"  # the field task's records lie at the top of each folder, the other tasks' in <protocol>/
REFERENCES = ("ground_truth", "large_image")  # the ceiling and the oracle on a larger image: shown, never in a claim


class NoRecordsError(ValueError):
    """None of the folders holds a record of the protocol."""


@dataclass(frozen=True)
class Summary:
    mean: float
    spread: float | None  # sample standard deviation; None for one seed
    values: tuple[float, ...]  # per seed, in the folders' order


@dataclass(frozen=True)
class Claim:
    better: str
    worse: str
    metric: str
    gap: float
    spread: float  # the larger of the two spreads
    every_seed: bool


def seed_records(folders: list[Path], protocol: str) -> list[dict[str, ResultRecord]]:
    """Per folder (one seed): method (the record's file name) -> its record of ``protocol``."""
    seeds = []
    for folder in folders:
        where = folder if protocol == FIELD else folder / protocol
        records = {}
        for path in sorted(where.glob("*.json")) if where.is_dir() else ():
            try:
                records[path.stem] = read_record(path)
            except (ValueError, KeyError, TypeError):  # another result beside the records (e.g. lift_regime.json)
                continue
        seeds.append({name: r for name, r in records.items() if r.protocol == protocol})
    return seeds


def summarise(seeds: list[dict[str, ResultRecord]], metrics: list[str]) -> dict[str, dict[str, Summary]]:
    """method -> metric -> Summary over the seeds that scored it (a seed's missing record is skipped)."""
    methods = sorted({name for records in seeds for name in records})
    table: dict[str, dict[str, Summary]] = {}
    for name in methods:
        table[name] = {}
        for metric in metrics:
            values = tuple(float(records[name].metrics[metric]) for records in seeds
                           if name in records and isinstance(records[name].metrics.get(metric), (int, float)))
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else None
                table[name][metric] = Summary(statistics.fmean(values), spread, values)
    return table


def claims(table: dict[str, dict[str, Summary]], metric: str, higher_is_better: bool,
           ranked: set[str]) -> list[Claim]:
    """Every pair of ranked methods whose means differ by more than twice the larger spread, on ``metric``."""
    sign = 1.0 if higher_is_better else -1.0
    found = []
    for a, b in itertools.permutations(sorted(ranked & set(table)), 2):
        sa, sb = table[a].get(metric), table[b].get(metric)
        if sa is None or sb is None or sa.spread is None or sb.spread is None or len(sa.values) != len(sb.values):
            continue
        gap, spread = sign * (sa.mean - sb.mean), max(sa.spread, sb.spread)
        if gap > 2 * spread:
            every = all(sign * (x - y) > 0 for x, y in zip(sa.values, sb.values, strict=True))
            found.append(Claim(a, b, metric, gap, spread, every))
    return found


def report(folders: list[Path], protocol: str) -> tuple[str, dict]:
    """(markdown, JSON-able record) of ``protocol`` over the seed folders."""
    spec = get_protocol(protocol).table
    metrics = list(spec.headline)
    seeds = seed_records(folders, protocol)
    table = summarise(seeds, metrics)
    if not table:
        raise NoRecordsError(f"no {protocol} records in {', '.join(map(str, folders))}")
    latest = {name: next(r for r in reversed(seeds) if name in r)[name] for name in table}
    ranked = {name for name, r in latest.items()
              if (r.training or {}).get("ranked") is not False and name not in REFERENCES}
    labels = {name: latest[name].label for name in table}
    rank_by = spec.rank_by if spec.rank_by in metrics else metrics[0]
    order = spec.column(rank_by)
    sign = -1.0 if order.higher_is_better else 1.0
    def position(name: str) -> tuple[bool, float]:  # best first; rows that are not ranked (references aside) last
        score = sign * table[name][rank_by].mean if rank_by in table[name] else float("inf")
        return name not in ranked and name not in REFERENCES, score

    rows = sorted(table, key=position)
    md = ["| upsampler | n | " + " | ".join(f"{m} {'↑' if spec.column(m).higher_is_better else '↓'}"
                                             for m in metrics) + " |",
          "| --- | ---: |" + " ---: |" * len(metrics)]
    for name in rows:
        n = max(len(s.values) for s in table[name].values())
        shown = []
        for metric in metrics:
            s = table[name].get(metric)
            shown.append("-" if s is None else f"{s.mean:.4f}" + ("" if s.spread is None else f" ± {s.spread:.4f}"))
        md.append(f"| {labels[name]} | {n} | " + " | ".join(shown) + " |")
    every_claim = {m: claims(table, m, spec.column(m).higher_is_better, ranked) for m in metrics}
    md += ["", "Mean ± sample standard deviation over the seeds (n). Claims (gap of the means > 2 x the larger "
           "spread; * also in every seed separately), best first:", ""]
    for metric in metrics:
        beaten: dict[str, list[str]] = {}
        for c in sorted(every_claim[metric], key=lambda c: rows.index(c.worse)):
            beaten.setdefault(c.better, []).append(c.worse + ("*" if c.every_seed else ""))
        lines = [f"{name} > {', '.join(beaten[name])}" for name in rows if name in beaten]
        md.append(f"- **{metric}**: " + ("; ".join(lines) if lines else "no claim"))
    record = {"protocol": protocol, "folders": [str(f) for f in folders],
              "summary": {n: {m: asdict(s) for m, s in per.items()} for n, per in table.items()},
              "ranked": sorted(ranked), "claims": {m: [asdict(c) for c in cs] for m, cs in every_claim.items()}}
    return "\n".join(md), record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="one folder of benchmark records per training seed")
    parser.add_argument("--protocols", nargs="+", default=[FIELD, "davis", "spair", "object_discovery", "salient"])
    parser.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json as well")
    args = parser.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        parser.error(f"not a folder of records: {', '.join(missing)}")
    sections, records = [], {}
    for protocol in args.protocols:
        try:
            markdown, records[protocol] = report(args.folders, protocol)
        except NoRecordsError as err:
            print(f"skipped {protocol}: {err}", file=sys.stderr)
            continue
        sections.append(f"## {protocol}\n\n{markdown}")
    if not sections:
        parser.error("no records of any protocol in these folders")
    text = "\n\n".join(sections)
    print(text)
    if args.out:
        from wrc.provenance import environment

        env = environment("cpu")
        header = "\n".join(f"- {key}: {env[key]}" for key in ("date", "commit") if key in env)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(f"# synthetic over seeds\n\n{header}\n- command: `{env['command']}`\n\n"
                                               f"{text}\n")
        args.out.with_suffix(".json").write_text(json.dumps({"environment": env, **records}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
