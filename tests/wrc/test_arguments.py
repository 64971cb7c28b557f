"""The shared command-line count type: every script that uses it names the option and the expected value."""

from __future__ import annotations

import argparse

import pytest

from benchmarks import bench_detection, bench_modern_peers, lift_regime, ua_probe_gap
from evaluation.synthetic import benchmark, detection_table
from wrc.arguments import integer_at_least, positive_int, positive_multiple_of


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


def test_positive_multiples_are_accepted_and_others_refused_with_the_reason():
    sixteen = positive_multiple_of(16, "twice the patch")
    assert sixteen("128") == 128 and positive_multiple_of(3)("9") == 9
    for text in ("0", "-16", "40", "12.0", "big"):
        with pytest.raises(argparse.ArgumentTypeError,
                           match=rf"expected a positive multiple of 16 \(twice the patch\); got '{text}'"):
            sixteen(text)


@pytest.mark.parametrize("parse", [benchmark.parse_args, lift_regime.parse_args, ua_probe_gap.parse_args])
@pytest.mark.parametrize("size", ["40", "0"])
def test_every_synthetic_script_refuses_a_scene_size_off_the_oracles_lattice(parse, size, capsys):
    extra = ["--train-steps", "1"] if parse is lift_regime.parse_args else []  # lift_regime needs a run to measure
    with pytest.raises(SystemExit):
        parse(["--image-size", size, *extra])
    assert (f"argument --image-size: expected a positive multiple of 16 (twice the oracle's patch); got '{size}'"
            in capsys.readouterr().err)
