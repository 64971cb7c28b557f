"""Tables from result records: any protocol's records x its table spec -> Markdown and CSV.

    python -m evaluation.tables probe_segmentation multirun/eval      # mIoU: upsamplers x datasets
    python -m evaluation.tables segmentation multirun/eval            # the same (alias)
    python -m evaluation.tables probe_depth runs/ --metrics d1 rmse abs_rel
    python -m evaluation.tables fidelity outputs                      # cosine / rel L2 per upsampler
    python -m evaluation.tables synthetic benchmarks/results/synthetic
    python -m evaluation.tables featup-table1 multirun/eval           # a paper's table by name (PAPER_TABLES)
    python -m evaluation.tables segmentation runs/ --out tables/seg   # also writes seg.md and seg.csv

A row is an upsampler (its registered name, or its name and the checkpoint it was loaded from, so two
checkpoints of one method are two rows; and its backbone when the records come from several). Results of
the same row and column from several runs (seeds) are averaged, with the population standard deviation
shown when there are several (n is in the CSV).
Nothing here knows a protocol by name: columns, directions and units come from each protocol's
TableSpec, and paper tables are data (PAPER_TABLES).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from evaluation.protocol import TableSpec, get_protocol, list_protocols
from evaluation.records import ResultRecord, collect

ALIASES = {"segmentation": "probe_segmentation", "depth": "probe_depth"}


@dataclass(frozen=True)
class Part:
    """One Markdown table of a paper's table: a protocol's records on some datasets (None: all), some metrics."""

    protocol: str
    datasets: tuple[str, ...] | None
    metrics: tuple[str, ...]


PAPER_TABLES: dict[str, tuple[Part, ...]] = {
    "wrc-table1": (Part("probe_segmentation", ("cityscapes",), ("miou", "pixel_accuracy")),
                   Part("davis", ("davis2017",), ("jf_mean",)), Part("object_discovery", ("coco20k",), ("corloc",))),
    "featup-table1": (Part("probe_segmentation", ("coco_stuff27",), ("miou", "pixel_accuracy")),
                      Part("probe_depth", ("nyuv2",), ("rmse", "d1"))),
    "srt-table2": (Part("probe_depth", ("nyuv2",), ("rmse", "rmse_log", "abs_rel", "d1")),),
    "jafar-probes": (Part("probe_segmentation", ("voc2012", "ade20k", "cityscapes", "coco_stuff27"), ("miou",)),
                     Part("probe_depth", ("nyuv2",), ("d1", "rmse"))),
    "synthetic": (Part("synthetic", None, ("cosine", "rel_l2", "cosine_2x", "miou", "boundary_f")),),
    # LiFT (ECCV'24), DINO ViT-S/16 at 56-448 px: the resolutions are columns (the protocols' split_by)
    "lift-table1": (Part("spair", ("spair71k",), ("pck@0.1", "pck@0.05", "pck@0.01")),),
    "lift-table2": (Part("davis", ("davis2017",), ("jf_mean",)),),
    "lift-table3": (Part("object_discovery", ("coco20k",), ("corloc",)),),
    # LiFT Table 4: ViTDet Mask R-CNN on COCO val2017, box and mask AP (the pyramid, tconv or upsampler, as columns)
    "lift-table4": (Part("detection", ("coco",), ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50",
                                                  "mask_ap75")),),
    "srt-table1": (Part("davis", ("davis2017",), ("jf_mean", "j_mean", "j_recall", "f_mean", "f_recall")),),
    "wrc-table2": (Part("spair", ("spair71k",), ("pck@0.1", "pck@0.05", "pck@0.01")),),
    "tokencut": (Part("object_discovery", ("voc07", "voc12", "coco20k"), ("corloc",)),
                 Part("salient", ("ecssd", "duts_te", "dut_omron"), ("max_f", "iou", "accuracy"))),
}


def column_group(record: ResultRecord, spec: TableSpec) -> tuple:
    """The columns a record's numbers go under: its dataset (when ``per_dataset``) and its value of each
    ``split_by`` resolution key, as a tuple that sorts numbers numerically (56 before 112)."""
    dataset = record.dataset.get("name", "") if spec.per_dataset else ""
    return (dataset, *(record.resolution.get(key, "") for key in spec.split_by))


def natural(value: object) -> tuple:
    """Sort key: numbers by value (56 before 112), before anything else by its text."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (0, value, "") if is_number else (1, 0, str(value))


def group_label(group: tuple) -> str:
    """``("spair71k", 224)`` -> ``spair71k 224``; ``("",)`` -> ``""``."""
    return " ".join(str(part) for part in group if part != "")


def cells(records: Sequence[ResultRecord], protocol: str, spec: TableSpec, metrics: Sequence[str],
          datasets: tuple[str, ...] | None = None) -> dict[tuple[str, tuple, str], list[float]]:
    """(row, column group, metric) -> values over runs, for ``protocol``'s records on ``datasets`` (None: all). Rows are
    upsamplers; when the records come from several backbones, the backbone is part of the row, so that runs on
    different backbones are never averaged together."""
    chosen = [r for r in records if r.protocol == protocol
              and (datasets is None or r.dataset.get("name", "") in datasets)]
    several_backbones = len({str(r.backbone.get("name")) for r in chosen}) > 1
    values: dict[tuple[str, tuple, str], list[float]] = defaultdict(list)
    for record in chosen:
        row = f"{record.label} @ {record.backbone.get('name')}" if several_backbones else record.label
        dataset = column_group(record, spec)
        for metric in metrics:
            value = record.metrics.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[(row, dataset, metric)].append(float(value))
    return values


def summarise(values: list[float], percent: bool) -> str:
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.pstdev(values) * scale:.{digits}f}"


def build_table(records: Sequence[ResultRecord], protocol: str, metrics: Sequence[str] | None = None,
                datasets: tuple[str, ...] | None = None) -> tuple[str, str]:
    """(markdown, csv) of ``protocol``'s records: upsamplers x (dataset, metric), headline metrics by default."""
    protocol = ALIASES.get(protocol, protocol)
    spec = get_protocol(protocol).table
    metrics = list(metrics or spec.headline)
    columns_of = {m: spec.column(m) for m in metrics}
    values = cells(records, protocol, spec, metrics, datasets)
    if not values:
        where = f" on {', '.join(datasets)}" if datasets else ""
        raise ValueError(f"no {protocol} results found{where} (looked for records with protocol {protocol!r})")
    columns = sorted({(group, metric) for _, group, metric in values},
                     key=lambda c: (tuple(natural(v) for v in c[0]), metrics.index(c[1])))
    rows = sorted({row for row, _, _ in values})
    if spec.rank_by in metrics:  # a ranking: best first, then the rows that are not ranked (under budget, ...)
        order = columns_of[spec.rank_by]
        score = {row: statistics.fmean(v) for (row, _, metric), v in values.items() if metric == spec.rank_by}
        missing = float("-inf") if order.higher_is_better else float("inf")
        sign = -1 if order.higher_is_better else 1
        unranked = {r.label for r in records if (r.training or {}).get("ranked") is False}
        rows.sort(key=lambda row: (row.split(" @ ")[0] in unranked, sign * score.get(row, missing)))
    headers = [header(group_label(group), metric, columns_of[metric], len(metrics)) for group, metric in columns]
    md = ["| upsampler | " + " | ".join(headers) + " |", "| --- |" + " ---: |" * len(columns)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["upsampler", "dataset", "metric", "mean", "std", "n"])
    for row in rows:
        shown = [summarise(values[(row, d, m)], columns_of[m].percent) if (row, d, m) in values else "-"
                 for d, m in columns]
        md.append(f"| {row} | " + " | ".join(shown) + " |")
        for group, metric in columns:
            if (row, group, metric) in values:
                v = values[(row, group, metric)]
                writer.writerow([row, group_label(group), metric, statistics.fmean(v), statistics.pstdev(v), len(v)])
    return "\n".join(md), buffer.getvalue()


def header(dataset: str, metric: str, column, num_metrics: int) -> str:
    """``voc2012`` (one metric per dataset), ``nyuv2 rmse ↓``, or ``cosine ↑`` (tables without datasets)."""
    unit = " (%)" if column.percent and num_metrics > 1 else (f" ({column.unit})" if column.unit else "")
    name = f"{metric}{unit} {column.arrow}"
    if not dataset:
        return name
    return dataset if num_metrics == 1 else f"{dataset} {name}"


def paper_table(records: Sequence[ResultRecord], name: str) -> tuple[str, str]:
    """The parts of a paper's table that ``records`` hold, as (markdown, csv); parts without results are noted,
    and it is an error only when none has any."""
    markdown, csv_parts = [], []
    for part in PAPER_TABLES[name]:
        title = f"{part.protocol} ({', '.join(part.datasets)})" if part.datasets else part.protocol
        try:
            part_md, part_csv = build_table(records, part.protocol, part.metrics, part.datasets)
        except ValueError:
            markdown.append(f"**{title}**: no results yet")
            continue
        markdown.append(f"**{title}**\n\n{part_md}")
        csv_parts.append(part_csv)
    if not csv_parts:
        raise ValueError(f"no results found for any part of {name}: {PAPER_TABLES[name]}")
    return "\n\n".join(markdown), "".join(csv_parts)


def write_table(folder: str | Path, protocol: str, env: Mapping[str, object]) -> str:
    """``<folder>/<protocol>.md`` (device, date, commit and command, then the table) and ``.csv`` from every record
    in ``folder``; returns the table."""
    folder = Path(folder)
    markdown, table_csv = build_table(collect([folder]).records, protocol)
    lines = "\n".join(f"- {key}: {env[key]}" for key in ("device", "date", "torch", "commit") if key in env)
    (folder / f"{protocol}.md").write_text(f"# {protocol}\n\n{lines}\n- command: `{env['command']}`\n\n{markdown}\n")
    (folder / f"{protocol}.csv").write_text(table_csv)
    return markdown


def main(argv: list[str] | None = None) -> int:
    choices = [*list_protocols(), *ALIASES, *PAPER_TABLES]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", choices=sorted(set(choices)), metavar="TABLE",
                        help=f"a protocol ({', '.join(list_protocols())}; aliases {', '.join(ALIASES)}) or a paper's "
                             f"table ({', '.join(PAPER_TABLES)})")
    parser.add_argument("runs", nargs="+", help="folders to search for result records")
    parser.add_argument("--metrics", nargs="+", default=None, help="metrics to show (default: the protocol's headline)")
    parser.add_argument("--out", default=None, help="write <out>.md and <out>.csv as well")
    args = parser.parse_args(argv)
    found = collect(args.runs)
    for path, reason in found.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if args.table in PAPER_TABLES and args.table not in list_protocols():
        markdown, table_csv = paper_table(found.records, args.table)
    else:
        markdown, table_csv = build_table(found.records, args.table, args.metrics)
    print(markdown)
    if found.skipped:
        print(f"\n{len(found.skipped)} result file(s) could not be read and were skipped (listed on stderr)")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(markdown + "\n")
        out.with_suffix(".csv").write_text(table_csv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
