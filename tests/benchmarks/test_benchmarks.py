"""The benchmarks run without Hydra, so they read a snapshot of the composed quickstart config."""

from __future__ import annotations

import json

from tests.conftest import REPO_ROOT
from tests.test_configs import compose_train


def test_quickstart_snapshot_matches_the_experiment_config():
    snapshot = json.loads((REPO_ROOT / "benchmarks" / "configs" / "quickstart.json").read_text())
    composed = compose_train("experiment=quickstart")
    assert {k: composed[k] for k in snapshot} == snapshot, (
        "benchmarks/configs/quickstart.json is stale: regenerate it from "
        "`python train_wrc.py experiment=quickstart --cfg job` (without run_dir, name, evaluate)"
    )


def test_committed_results_record_commands_as_typed_never_machine_paths():
    import re

    from tests.conftest import REPO_ROOT

    absolute = re.compile(r"(/root/|/home/|/work/|/Users/|\.pyenv|site-packages)")
    offenders = [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "benchmarks" / "results").rglob("*")
                 if p.suffix in (".md", ".json", ".csv") and absolute.search(p.read_text())]
    assert not offenders


def test_commands_are_written_as_a_user_types_them():
    from wrc.provenance import REPO_ROOT, command_line

    assert command_line([str(REPO_ROOT / "benchmarks" / "bench_srt.py"), "--x"], "benchmarks.bench_srt") == \
        "python -m benchmarks.bench_srt --x"
    script = str(REPO_ROOT / "train_wrc.py")
    assert command_line([script, "model=lift", "a=b c"]) == "python train_wrc.py model=lift 'a=b c'"
    assert command_line(["/usr/bin/pytest", "-q"]) == "pytest -q"


def test_the_cost_benchmark_names_a_bad_method_or_size(monkeypatch, capsys):
    import sys

    import pytest

    from benchmarks import bench_modern_peers

    for argv, message in ((["--methods", "no_such_upsampler"], "--methods: unknown upsampler(s) ['no_such_upsampler']"),
                          (["--sizes", "0"], "argument --sizes: expected an integer >= 1; got '0'")):
        monkeypatch.setattr(sys, "argv", ["bench_modern_peers", *argv])
        with pytest.raises(SystemExit):
            bench_modern_peers.main()
        assert message in capsys.readouterr().err
