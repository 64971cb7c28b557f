"""The shared command-line count type: every script that uses it names the option and the expected value."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import bench_detection, bench_modern_peers, lift_regime
from evaluation.synthetic import benchmark, detection_table
from wrc.arguments import integer_at_least, positive_int


def test_integers_at_least_the_minimum_are_accepted_and_others_refused():
    assert positive_int("1") == 1 and integer_at_least(0)("0") == 0
    for text in ("0", "-3", "2.5", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"expected an integer >= 1; got '{text}'"):
            positive_int(text)


@pytest.mark.parametrize("parse, option", [
    (benchmark.parse_args, "--steps"), (benchmark.parse_args, "--task-items"),
    (detection_table.parse_args, "--upsampler-batch-size"), (bench_detection.parse_args, "--repeat"),
    (lift_regime.parse_args, "--test-scenes"),
])
def test_scripts_name_the_option_given_zero(parse, option, capsys):
    with pytest.raises(SystemExit):
        parse([option, "0"])
    assert f"argument {option}: expected an integer >= 1; got '0'" in capsys.readouterr().err


def test_the_cost_benchmark_refuses_a_zero_batch(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_modern_peers", "--batch", "1", "0"])
    with pytest.raises(SystemExit):
        bench_modern_peers.main()
    assert "argument --batch: expected an integer >= 1; got '0'" in capsys.readouterr().err
