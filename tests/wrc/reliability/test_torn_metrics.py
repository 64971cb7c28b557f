"""Guarantee: a torn last line of metrics.jsonl (a kill or power loss mid-write) never blocks a resume: readers drop
it with a warning and the logger repairs it before appending; a damaged line elsewhere is an error naming the file
and the line number."""

from __future__ import annotations

import json
import logging
import re

import pytest

from wrc.run_logger import METRICS_FILE, CorruptMetricsError, RunLogger, read_metrics, truncate_metrics


def _run(tmp_path, steps=5):
    logger = RunLogger(tmp_path)
    for step in range(1, steps + 1):
        logger.log(step, {"loss": 1.0 / step})
    logger.close()
    return tmp_path / METRICS_FILE


@pytest.mark.parametrize("tail", [b'{"step": 6, "lo', b"\x00" * 37, b'{"step": 6, "loss": 0.1}garbage'])
def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog, tail):
    path = _run(tmp_path)
    path.write_bytes(path.read_bytes() + tail)
    with caplog.at_level(logging.WARNING, logger="wrc"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert "torn last line 6" in caplog.text and str(path) in caplog.text
    truncate_metrics(tmp_path, 3)
    assert path.read_text() == "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))


def test_appending_after_a_torn_line_keeps_the_file_readable(tmp_path):
    path = _run(tmp_path, steps=2)
    path.write_bytes(path.read_bytes() + b'{"step": 3, "lo')
    logger = RunLogger(tmp_path)
    logger.log(3, {"loss": 0.3})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):
    path = _run(tmp_path, steps=2)
    path.write_bytes(path.read_bytes() + b'{"step": 3, "loss": 0.3}')
    logger = RunLogger(tmp_path)
    logger.log(4, {"loss": 0.25})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_a_corrupt_line_in_the_middle_names_file_and_line(tmp_path):
    path = _run(tmp_path)
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:10]
    path.write_text("\n".join(lines) + "\n")
    for reader in (lambda: read_metrics(tmp_path), lambda: truncate_metrics(tmp_path, 2)):
        with pytest.raises(CorruptMetricsError, match=re.escape(f"{path}, line 3: not a JSON record")):
            reader()
    assert issubclass(CorruptMetricsError, ValueError)
