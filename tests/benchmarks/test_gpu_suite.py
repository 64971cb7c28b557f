"""benchmarks.gpu_suite: the one command for the GPU checks, kept from rotting by its CPU smoke mode, and the
pieces that read its results (JUnit XML, benchmark JSON) checked against hand-written inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from benchmarks import gpu_suite
from tests.conftest import REPO_ROOT

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="6">
<testcase classname="tests.torch_wrc.test_wrc_ops" name="test_parity_with_the_reference_fp32[cuda-2-small]"/>
<testcase classname="tests.torch_wrc.test_wrc_ops" name="test_spectral_parity_with_the_reference_fp32[cuda-5-6]">
<failure message="mismatch">AssertionError</failure></testcase>
<testcase classname="tests.torch_wrc.test_wrc_ops" name="test_decimate_gradcheck_float64[cuda-2-2]"/>
<testcase classname="tests.torch_wrc.test_adaptive_conv_op" name="test_gradcheck_float64_covers_every_tap[cuda-3]"/>
<testcase classname="tests.torch_wrc.test_adaptive_conv_op" name="test_parity_forward_and_backward[cuda-dtype0]"/>
<testcase classname="tests.torch_wrc.test_every_op" name="test_runs_on_the_current_stream[cuda-decimate]">
<skipped message="no"/></testcase>
</testsuite></testsuites>
"""


def test_junit_summary_counts_outcomes_and_covers_ops_by_test(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    summary = gpu_suite.summarise_junit(path)
    assert summary["counts"] == {"passed": 4, "failed": 1, "error": 0, "skipped": 1}
    parity, gradcheck = summary["coverage"]["parity"], summary["coverage"]["gradcheck"]
    assert parity == {"block_solve": ["passed"], "lr_spectral_solve": ["failed"], "decimate": [],
                      "adaptive_conv": ["passed"], "neighbourhood_attention": []}
    assert gradcheck == {"block_solve": [], "lr_spectral_solve": [], "decimate": ["passed"],
                         "adaptive_conv": ["passed"], "neighbourhood_attention": []}


def write_result(folder, name, results):
    (folder / f"{name}_cuda.json").write_text(json.dumps({"environment": {}, "results": results}))


def test_targets_are_judged_from_the_result_files(tmp_path):
    """Hand-made results: WRC 2.4 ms vs LiFT 1.5 ms (1.6x: over 1.5x), block solve 12x / 9x, one Table 6 shape."""
    write_result(tmp_path, "inference", [
        {"upsampler": "wrc", "batch": 1, "image_size": 448, "median_ms": 2.4},
        {"upsampler": "lift", "batch": 1, "image_size": 448, "median_ms": 1.5},
        {"upsampler": "wrc", "batch": 8, "image_size": 448, "median_ms": 90.0}])
    write_result(tmp_path, "wrc_ops", {"extension_vs_reference": [
        {"op": "block_solve", "batch": 1, "grid": 32, "speedup_forward": 12.0, "speedup_forward_backward": 9.0},
        {"op": "block_solve", "batch": 8, "grid": 64, "speedup_forward": 20.0, "speedup_forward_backward": 15.0},
        {"op": "closed_form", "batch": 1, "grid": 32, "speedup_forward": 0.5, "speedup_forward_backward": 0.5}]})
    write_result(tmp_path, "adaptive_conv", [
        {"shape": [1, 14, 14, 2048, 5], "memory_reduction_forward_backward": 20.0, "speedup_forward_backward": 6.0},
        {"shape": [1, 224, 224, 384, 7], "memory_reduction_forward_backward": 1.0, "speedup_forward_backward": 1.0}])
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    rows = {r["target"]: r for r in gpu_suite.evaluate_targets(tmp_path, "cuda", junit)}
    assert rows["WRC upsampler at 448, batch 1: <= 3 ms"]["status"] == "pass"
    assert rows["WRC upsampler at 448, batch 1: <= 1.5x LiFT's time"]["measured"].startswith("1.60x")
    assert rows["WRC upsampler at 448, batch 1: <= 1.5x LiFT's time"]["status"] == "FAIL"
    assert rows["fused block solve >= 10x the reference, forward"]["status"] == "pass"
    assert rows["fused block solve >= 10x the reference, forward+backward"]["measured"].startswith("min 9.0x")
    assert rows["fused block solve >= 10x the reference, forward+backward"]["status"] == "FAIL"
    memory = next(r for label, r in rows.items() if "less memory" in label)
    assert memory["status"] == "pass" and memory["measured"] == "min 20.0x at (1, 14, 14, 2048, 5)"  # JBU: not Table 6
    parity = next(r for label, r in rows.items() if label.startswith("parity"))
    assert parity["measured"] == "2/5 ops, 2/3 tests" and parity["status"] == "FAIL"
    assert rows["every device test passes on cuda"]["status"] == "FAIL"


def test_missing_results_are_reported_as_missing(tmp_path):
    rows = gpu_suite.evaluate_targets(tmp_path, "cuda", None)
    assert rows and all(r["status"] == "missing" and r["measured"] == "no result" for r in rows)


def test_compile_progress_names_the_source_of_each_ninja_line():
    line = ("[3/9] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile -c /x/torch_wrc/csrc/cuda/"
            "block_solve_cuda.cu -o /tmp/b/block_solve_cuda.o -O3\n")
    assert gpu_suite.compile_progress(line) == "[3/9] block_solve_cuda.cu"
    assert gpu_suite.compile_progress("copying build/lib/x.so\n") is None
    assert gpu_suite.compile_progress("x.cu(12): error: identifier y is undefined\n").startswith("x.cu(12): error")


def test_device_tests_are_found_by_their_fixture():
    modules = {p.relative_to(REPO_ROOT).as_posix() for p in gpu_suite.device_test_modules()}
    assert {"tests/torch_wrc/test_wrc_ops.py", "tests/torch_wrc/test_adaptive_conv_op.py"} <= modules
    assert "tests/benchmarks/test_gpu_suite.py" not in modules


def test_a_step_over_its_budget_is_killed_with_its_children(tmp_path):
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
            "print('started', flush=True); time.sleep(60)"
    start = time.perf_counter()
    status, seconds = gpu_suite.run_process([sys.executable, "-c", child], tmp_path / "log.txt", budget_s=2)
    assert status == "timeout (2 s)" and time.perf_counter() - start < 20
    assert "started" in (tmp_path / "log.txt").read_text()


def test_every_benchmark_has_a_gpu_budget_and_a_module():
    names = [b.name for b in gpu_suite.BENCHMARKS]
    on_disk = {p.stem.removeprefix("bench_") for p in (REPO_ROOT / "benchmarks").glob("bench_*.py")}
    assert on_disk <= set(names), f"benchmarks the suite does not run: {sorted(on_disk - set(names))}"
    assert len(names) == len(set(names)) and all(b.budget_s > 0 for b in gpu_suite.BENCHMARKS)


@pytest.mark.slow
def test_smoke_mode_runs_every_step_end_to_end(tmp_path):
    """The CI run of the whole pipeline on the CPU at tiny sizes: every benchmark writes its result with the command
    a user types, and the summary reads them."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--smoke", "--out", str(out), "--logs",
                           str(logs)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((out / "gpu_suite_cpu.json").read_text())
    steps = {s["name"]: s["status"] for s in record["steps"]}
    assert steps["build"] == "skipped (--smoke)" and steps["tests"] == "ok"
    for bench in gpu_suite.BENCHMARKS:
        if not (REPO_ROOT / "benchmarks" / f"bench_{bench.name}.py").exists() or bench.smoke_args is None:
            continue
        assert steps[f"bench_{bench.name}"] == "ok", (bench.name, (logs / f"bench_{bench.name}_cpu.log").read_text())
        result = json.loads((out / f"{bench.name}_cpu.json").read_text())
        assert result["environment"]["command"] == " ".join(
            [f"python -m benchmarks.bench_{bench.name}", "--device", "cpu", *bench.smoke_args])
    assert {t["target"] for t in record["targets"]} >= {"WRC upsampler at 448, batch 1: <= 3 ms",
                                                        "every device test passes on cpu"}
    summary = (out / "gpu_suite_cpu.md").read_text()
    assert "## Targets" in summary and "python -m benchmarks.gpu_suite --smoke" in summary
    assert "every device test passes on cpu" in proc.stdout  # the one-screen table


@pytest.mark.slow
def test_a_benchmark_runs_in_its_own_process_as_on_the_gpu(tmp_path):
    """The GPU run's path (--smoke runs benchmarks in-process): a worker process writes into --out and records
    the benchmark's own command."""
    bench = gpu_suite.Benchmark("ncut", 120, ("--tokens", "64", "--repeat", "1"))
    step = gpu_suite.run_benchmark_step(bench, "cpu", tmp_path, tmp_path, budget_s=300, smoke=False)
    assert step.status == "ok", step.log.read_text()[-3000:]
    command = json.loads((tmp_path / "ncut_cpu.json").read_text())["environment"]["command"]
    assert command == "python -m benchmarks.bench_ncut --device cpu " + " ".join(bench.args)
