"""Paper tables from result files: collect every result JSON under the given run directories and print
(or write) Markdown and CSV tables, mean and standard deviation over seeds.

    python -m evaluation.tables segmentation multirun/probes          # mIoU: upsamplers x datasets
    python -m evaluation.tables depth multirun/probes --metrics d1 rmse abs_rel
    python -m evaluation.tables fidelity outputs                       # cosine / rel L2 per upsampler
    python -m evaluation.tables segmentation runs/ --out tables/seg    # also writes seg.md and seg.csv
    python -m evaluation.tables synthetic benchmarks/results/synthetic  # the synthetic benchmark's table
    python -m evaluation.tables featup-table1 multirun/probes         # one paper's table (PAPER_TABLES)

A row is an upsampler (its registered name, or the run directory of its checkpoint); results of the same
row and column from different seeds are averaged, and the standard deviation is shown when there are
several (population std, n given in the CSV).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

TABLES = ("segmentation", "depth", "fidelity", "synthetic")


def model_label(model: dict) -> str:
    checkpoint = model.get("checkpoint")
    return f"{model['name']} ({Path(checkpoint).name})" if checkpoint else model["name"]


def collect(roots: Iterable[str | Path]) -> list[dict]:
    """Every JSON result record under ``roots`` (probe result.json files and fidelity metrics)."""
    records = []
    for root in roots:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such run directory: {root}")
        for path in sorted(root.rglob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(record, dict) and "protocol" in record:
                records.append({**record, "_path": str(path)})
    return records


def cells(records: list[dict], table: str, metrics: list[str],
          datasets: tuple[str, ...] | None = None) -> dict[tuple[str, str], list[float]]:
    """(row, column) -> values over seeds; ``datasets`` keeps only probe results on those datasets."""
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if datasets is not None and r.get("dataset") not in datasets:
            continue
        if table in ("segmentation", "depth") and r["protocol"] == f"linear_probe_{table}":
            for metric in metrics:
                column = r["dataset"] if len(metrics) == 1 else f"{r['dataset']} {metric}"
                values[(model_label(r["model"]), column)].append(float(r["metrics"][metric]))
        elif table == "synthetic" and r["protocol"] == "synthetic":
            for metric in metrics:
                values[(model_label(r["model"]), metric)].append(float(r["metrics"][metric]))
        elif table == "fidelity" and r["protocol"] == "fidelity":
            for name, scores in r["results"].items():
                for metric in metrics:
                    values[(name, metric)].append(float(scores[metric]))
    return values


def summarise(values: list[float], scale: float) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.2f}" if scale != 1 else f"{mean:.4f}"
    std = statistics.pstdev(values) * scale
    return f"{mean:.2f} ± {std:.2f}" if scale != 1 else f"{mean:.4f} ± {std:.4f}"


def build_table(records: list[dict], table: str, metrics: list[str],
                datasets: tuple[str, ...] | None = None) -> tuple[str, str]:
    """(markdown, csv) for ``table``; percentages for mIoU / accuracy / delta metrics."""
    values = cells(records, table, metrics, datasets)
    if not values:
        protocol = table if table in ("fidelity", "synthetic") else f"linear_probe_{table}"
        raise ValueError(f"no {table} results found (looked for protocol {protocol!r})")
    rows = sorted({row for row, _ in values})
    if table == "synthetic":  # a ranking: best first on the first metric
        rows.sort(key=lambda row: -statistics.fmean(values.get((row, metrics[0]), [float("-inf")])))
    columns = sorted({column for _, column in values})
    if table in ("fidelity", "synthetic"):  # columns are metrics: keep the order asked for
        columns = [m for m in metrics if m in columns]
    percent = {"miou", "pixel_accuracy", "mean_class_accuracy", "d1", "d2", "d3"}
    scale = 100.0 if all(m in percent for m in metrics) else 1.0
    md = ["| upsampler | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["upsampler", "column", "mean", "std", "n"])
    for row in rows:
        md.append(f"| {row} | " + " | ".join(summarise(values[(row, c)], scale) if (row, c) in values else "-"
                                           for c in columns) + " |")
        for column in columns:
            if (row, column) in values:
                v = values[(row, column)]
                writer.writerow([row, column, statistics.fmean(v), statistics.pstdev(v), len(v)])
    return "\n".join(md), buffer.getvalue()


DEFAULT_METRICS = {"segmentation": ["miou"], "depth": ["d1", "rmse"], "fidelity": ["cosine", "rel_l2"],
                   "synthetic": ["cosine", "rel_l2", "cosine_2x", "miou", "boundary_f"]}


PAPER_TABLES: dict[str, list[tuple[str, tuple[str, ...] | None, list[str]]]] = {
    # name: parts (table, datasets or None for all, metrics); each part is one Markdown table
    "wrc-table1": [("segmentation", ("cityscapes",), ["miou", "pixel_accuracy"])],
    "featup-table1": [("segmentation", ("coco_stuff27",), ["miou", "pixel_accuracy"]),
                      ("depth", ("nyuv2",), ["rmse", "d1"])],
    "srt-table2": [("depth", ("nyuv2",), ["rmse", "rmse_log", "abs_rel", "d1"])],
    "jafar-probes": [("segmentation", ("voc2012", "ade20k", "cityscapes", "coco_stuff27"), ["miou"]),
                     ("depth", ("nyuv2",), ["d1", "rmse"])],
    "synthetic": [("synthetic", None, DEFAULT_METRICS["synthetic"])],
}


def paper_table(records: list[dict], name: str) -> tuple[str, str]:
    """The parts of a paper's table that ``records`` hold, as (markdown, csv); parts without results are
    noted, and it is an error only when none has any."""
    markdown, csv_parts = [], []
    for table, datasets, metrics in PAPER_TABLES[name]:
        title = f"{table} ({', '.join(datasets)})" if datasets else table
        try:
            part_md, part_csv = build_table(records, table, metrics, datasets)
        except ValueError:
            markdown.append(f"**{title}**: no results yet")
            continue
        markdown.append(f"**{title}**\n\n{part_md}")
        csv_parts.append(part_csv)
    if not csv_parts:
        raise ValueError(f"no results found for any part of {name}: {PAPER_TABLES[name]}")
    return "\n\n".join(markdown), "".join(csv_parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=[*TABLES, *PAPER_TABLES],
                        help="a generic table, or a paper's table by name: " + ", ".join(PAPER_TABLES))
    parser.add_argument("runs", nargs="+", help="run directories to search for result JSONs")
    parser.add_argument("--metrics", nargs="+", default=None, help="metrics to show (default per table)")
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.csv as well")
    args = parser.parse_args(argv)
    records = collect(args.runs)
    if args.table in PAPER_TABLES and args.table not in TABLES:
        markdown, table_csv = paper_table(records, args.table)
    else:
        markdown, table_csv = build_table(records, args.table, args.metrics or DEFAULT_METRICS[args.table])
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(markdown + "\n")
        out.with_suffix(".csv").write_text(table_csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
