"""One command for the GPU checks: build the extension with CUDA, run the device tests on CUDA, run every
benchmark on CUDA, and print a one-screen summary against the project's targets.

    python -m benchmarks.gpu_suite [--smoke] [--skip-build] [--out benchmarks/results] [--deadline 470]
        [--only tests bench_wrc_ops ...] [--logs DIR]

1. build    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=<the visible GPU's> pip install -e . --no-deps --no-build-isolation,
            skipped when torch_wrc/_C is newer than its sources and carries CUDA kernels; compile progress is
            printed. If pip fails (e.g. a setuptools too old for the project's metadata), the same sources are
            compiled by torch.utils.cpp_extension, which needs no packaging metadata.
2. tests    pytest --device cuda -k cuda over the test modules holding a test that takes the ``device`` fixture.
3. bench_*  every benchmark with --device cuda and the sizes in BENCHMARKS, each in its own process with a time
            budget, writing <name>_cuda.{md,json} (device, date, commit and command inside) into --out.
4. summary  the targets, read from those JSON files and the tests' JUnit XML: a table on screen and
            <out>/gpu_suite_cuda.{md,json}.

Steps run in order of importance; one that cannot start before --deadline seconds is skipped and says so, so the
whole run fits a device slot (under 8 minutes on one H100/H200 is the aim; each step's time is in the summary).
Logs (full output of every step) go to --logs, a temporary folder by default. --only runs some steps (e.g. the
ones a first run had no time for); the summary then still reads every result file in --out.
--smoke (CI): the same steps on the CPU at tiny sizes, benchmarks in this process, no build, into a temporary
folder unless --out is given: it keeps the plumbing from rotting; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("benchmarks") / "results"


@dataclass(frozen=True)
class Benchmark:
    """benchmarks/bench_<name>.py, run with --device and ``args`` (GPU run) or ``smoke_args`` (CI)."""

    name: str
    budget_s: float
    args: tuple[str, ...] = ()
    smoke_args: tuple[str, ...] | None = ()  # None: no smoke sizes known, skipped by --smoke


# In order of importance: those holding the targets first, the long training comparisons last.
BENCHMARKS = (
    Benchmark("wrc_ops", 90, ("--quick",), ("--tiny",)),
    Benchmark("inference", 60, ("--batch", "1", "8"),
              ("--backbone", "test_vit", "--sizes", "64", "--repeat", "1", "--models", "bilinear", "lift", "wrc")),
    Benchmark("wrc_speed", 60, (), ("--sizes", "56", "--repeat", "1", "--channels", "16")),
    Benchmark("adaptive_conv", 90, (), ("--shapes", "1,6,6,4,3", "--repeat", "1", "--memory-in-process")),
    Benchmark("neighbourhood_attention", 90, (),
              ("--sizes", "12", "16", "--reference-sizes", "16", "--tokens", "9", "--dim", "16", "--channels", "8",
               "--heads", "2", "--kernel", "3", "--repeat", "1", "--memory-in-process")),
    Benchmark("modern_peers", 120, ("--max-gib", "100"),
              ("--backbone", "test_vit", "--sizes", "144", "--batch", "1", "--repeat", "1", "--memory-in-process",
               "--methods", "jafar", "naf")),
    Benchmark("training", 90, (), ("--steps", "4", "--image-size", "64", "--batch-size", "2", "--variants", "lift")),
    Benchmark("propagation", 45, (),
              ("--frames", "2", "--channels", "8", "--grid-scale", "0.2", "--repeat", "1", "--memory-in-process")),
    Benchmark("srt", 45, (), ("--backbone", "test_vit", "--size", "64", "--views", "1", "2", "4", "--repeat", "1")),
    Benchmark("implicit", 60, (), ("--backbone", "test_vit", "--sizes", "64", "--steps", "1", "--num-jitters", "4")),
    Benchmark("ncut", 45, ("--tokens", "196", "784", "3136", "--repeat", "2"), ("--tokens", "64", "--repeat", "1")),
    Benchmark("tiling", 45, (), None),
    Benchmark("detection", 150, (),
              ("--backbone", "test_vit", "--size", "64", "--proposals", "16", "--detections", "8", "--channels", "16",
               "--variants", "tconv", "bilinear", "lift", "wrc", "--repeat", "1", "--warmup", "0",
               "--memory-in-process")),
    Benchmark("quality", 120, ("--steps", "100"),
              ("--steps", "2", "--num-images", "1", "--image-size", "64", "--limit", "1")),
    Benchmark("peers", 150, ("--steps", "100", "--num-images", "8", "--implicit-steps", "50"),
              ("--steps", "2", "--num-images", "1", "--image-size", "64", "--implicit-steps", "1",
               "--methods", "lift", "bilinear")),
)
BUILD_BUDGET_S, TESTS_BUDGET_S, SMOKE_BUDGET_S = 240.0, 150.0, 120.0
SMOKE_TESTS = "(test_gradcheck_float64 and not tap) or (test_parity_with_the_reference_fp32 and small)"
CUSTOM_OPS = ("block_solve", "lr_spectral_solve", "decimate", "adaptive_conv", "neighbourhood_attention")


@dataclass
class Step:
    name: str
    status: str = "not run"  # ok | failed (...) | timeout | skipped (...)
    seconds: float = 0.0
    output: str = ""
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" or self.status.startswith("ok ")


# ----------------------------------------------------------------------------------------------------------------
# Running things
# ----------------------------------------------------------------------------------------------------------------


def run_process(cmd: list[str], log: Path, budget_s: float, env: dict | None = None,
                echo: Callable[[str], str | None] | None = None) -> tuple[str, float]:
    """Run ``cmd`` from the repository root with its output in ``log`` (lines that ``echo`` maps to text are also
    printed); it and its children are killed after ``budget_s``. Returns (status, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            for line in proc.stdout:
                handle.write(line)
                shown = echo(line) if echo else None
                if shown:
                    print(f"        {shown}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=max(budget_s, 1.0))
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timeout ({budget_s:.0f} s)"
        reader.join(timeout=10)
    return status, time.perf_counter() - start


def log_tail(log: Path, lines: int = 12) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def run_benchmark(name: str, args: list[str], out: Path) -> None:
    """Run benchmarks/bench_<name>.py as ``python -m benchmarks.bench_<name> <args>`` would, writing its results
    into ``out``: the command it records is the one a user types, whatever folder the results go to."""
    from benchmarks import common

    module = f"benchmarks.bench_{name}"
    saved_dir, saved_argv = common.RESULTS_DIR, sys.argv
    common.RESULTS_DIR = out  # read by common.write_results (and bench_peers' figure) at call time
    sys.argv = [str(REPO_ROOT / "benchmarks" / f"bench_{name}.py"), *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        common.RESULTS_DIR, sys.argv = saved_dir, saved_argv


def worker_main(argv: list[str]) -> None:
    """``python -m benchmarks.gpu_suite --worker <name> <out> <args...>``: one benchmark in this process."""
    name, out, *args = argv
    run_benchmark(name, args, Path(out))


# ----------------------------------------------------------------------------------------------------------------
# 1. build
# ----------------------------------------------------------------------------------------------------------------


def compiled_library() -> Path | None:
    found = sorted((REPO_ROOT / "torch_wrc").glob("_C*" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")))
    return found[0] if found else None


def has_cuda_kernels_in_fresh_process() -> bool:
    code = "import torch_wrc, sys; sys.exit(0 if torch_wrc.has_cuda_kernels() else 1)"
    env = {k: v for k, v in os.environ.items() if k != "WRC_DISABLE_EXTENSION"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True).returncode == 0


def build_is_current() -> bool:
    """The compiled library is newer than every source and setup.py, and carries CUDA kernels."""
    library = compiled_library()
    if library is None:
        return False
    sources = [p for p in (REPO_ROOT / "torch_wrc" / "csrc").rglob("*") if p.is_file()] + [REPO_ROOT / "setup.py"]
    return library.stat().st_mtime > max(p.stat().st_mtime for p in sources) and has_cuda_kernels_in_fresh_process()


def compile_progress(line: str) -> str | None:
    """'[3/9] /usr/local/cuda/bin/nvcc ... -c .../block_solve_cuda.cu -o ...' -> '[3/9] block_solve_cuda.cu'."""
    match = re.search(r"\[(\d+/\d+)\].*?([\w.-]+\.(?:cu|cpp))\b", line)
    if match:
        return f"[{match.group(1)}] {match.group(2)}"
    return line.strip()[:160] if re.search(r"\berror\b", line) else None


def jit_build() -> None:
    """``--jit-build``: compile torch_wrc/_C with torch.utils.cpp_extension (ninja), the same sources and flags as
    setup.py, and put the library where ``import torch_wrc._C`` finds it. The fallback when pip cannot build."""
    if not os.environ.get("CUDA_HOME") and shutil.which("nvcc"):
        os.environ["CUDA_HOME"] = cuda_home_of_nvcc(shutil.which("nvcc"))
    from torch.utils import cpp_extension  # reads CUDA_HOME at import

    csrc = REPO_ROOT / "torch_wrc" / "csrc"
    sources = [csrc / "wrc_ops.cpp", *sorted((csrc / "cpu").glob("*.cpp")), *sorted((csrc / "cuda").glob("*.cu"))]
    build_dir = tempfile.mkdtemp(prefix="torch_wrc_jit_")
    cpp_extension.load(name="_C", sources=[str(s) for s in sources], build_directory=build_dir, with_cuda=True,
                       extra_cflags=["-O3", "-fopenmp", "-DWITH_CUDA"], extra_ldflags=["-fopenmp"],
                       extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr", "-DWITH_CUDA"],
                       is_python_module=False, verbose=True)
    target = REPO_ROOT / "torch_wrc" / ("_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    shutil.copy(Path(build_dir) / "_C.so", target)
    print(f"torch_wrc: compiled with torch.utils.cpp_extension into {target.name}")


def cuda_home_of_nvcc(nvcc: str) -> str:
    """The toolkit folder of ``nvcc``, asked from nvcc itself (it sees through wrapper scripts), as setup.py's
    find_cuda_home does (setup.py cannot be imported: it runs setup())."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([nvcc, "-dryrun", "x.cu"], capture_output=True, text=True, timeout=60)
        match = re.search(r"_HERE_=(\S+)", out.stdout + out.stderr)
        if match:
            return os.path.dirname(os.path.normpath(match.group(1)))
    return str(Path(nvcc).resolve().parents[1])


def build(logs: Path, budget_s: float) -> Step:
    import torch
    from torch.utils import cpp_extension

    step = Step("build", log=logs / "build_pip.log")
    if not torch.cuda.is_available():
        step.status = "failed (torch sees no GPU)"
        return step
    start = time.perf_counter()
    if build_is_current():
        step.status, step.output = "ok (up to date)", str(compiled_library().relative_to(REPO_ROOT))
        step.seconds = time.perf_counter() - start
        return step
    arch = "{}.{}".format(*torch.cuda.get_device_capability())
    env = {**os.environ, "FORCE_CUDA": "1", "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(os.cpu_count() or 4)}
    if not cpp_extension.is_ninja_available():
        print("        ninja is not installed: the sources compile one after another (several minutes)", flush=True)
    print(f"        pip install -e . (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST={arch}, MAX_JOBS={env['MAX_JOBS']})",
          flush=True)
    cmd = [sys.executable, "-m", "pip", "install", "-v", "-e", ".", "--no-deps", "--no-build-isolation"]
    status, _ = run_process(cmd, logs / "build_pip.log", budget_s, env, echo=compile_progress)
    if status != "ok" and not status.startswith("timeout"):
        print(f"        pip: {status}; compiling with torch.utils.cpp_extension instead", flush=True)
        print("\n".join("        | " + line for line in log_tail(logs / "build_pip.log", 6).splitlines()))
        remaining = budget_s - (time.perf_counter() - start)
        step.log = logs / "build_jit.log"
        status, _ = run_process([sys.executable, "-m", "benchmarks.gpu_suite", "--jit-build"], step.log, remaining,
                                env, echo=compile_progress)
    step.seconds = time.perf_counter() - start
    if status == "ok" and not has_cuda_kernels_in_fresh_process():
        status = "failed (built, but torch_wrc has no CUDA kernels)"
    step.status = status
    if step.ok:
        step.output = str(compiled_library().relative_to(REPO_ROOT))
    return step


# ----------------------------------------------------------------------------------------------------------------
# 2. tests
# ----------------------------------------------------------------------------------------------------------------


def device_test_modules() -> list[Path]:
    """Test modules with a test function (or method) taking the ``device`` fixture."""
    found = []
    for path in sorted((REPO_ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
                if any(arg.arg == "device" for arg in node.args.args):
                    found.append(path)
                    break
    return found


def run_tests(device: str, logs: Path, budget_s: float, smoke: bool) -> tuple[Step, Path]:
    step, junit = Step("tests", log=logs / f"pytest_{device}.log"), logs / f"pytest_{device}.xml"
    modules = device_test_modules()
    if importlib_missing("pytest"):
        step.status = "failed (pytest is not installed)"
        return step, junit
    if not modules:
        step.status = "failed (no test takes the device fixture)"
        return step, junit
    cmd = [sys.executable, "-m", "pytest", *[str(m.relative_to(REPO_ROOT)) for m in modules], "--device", device,
           "-k", SMOKE_TESTS if smoke else device, "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    print(f"        pytest --device {device} over {len(modules)} modules", flush=True)
    step.status, step.seconds = run_process(cmd, step.log, budget_s,
                                            echo=lambda line: line.strip() if re.match(r"^(FAILED|ERROR) ", line)
                                            else None)
    step.output = summarise_junit(junit)["line"] if junit.exists() else ""
    return step, junit


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def summarise_junit(junit: Path) -> dict:
    """Counts of the test run, and per custom op whether its parity and gradcheck tests ran and passed."""
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
        cases.append((case.get("classname", ""), case.get("name", ""), outcome))
    counts = {k: sum(1 for *_, o in cases if o == k) for k in ("passed", "failed", "error", "skipped")}
    coverage = {kind: {op: [o for module, name, o in cases if op_of(module, name) == op and kind in name]
                       for op in CUSTOM_OPS} for kind in ("parity", "gradcheck")}
    line = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no tests ran"
    return {"counts": counts, "coverage": coverage, "line": line}


def op_of(module: str, name: str) -> str | None:
    """The custom op a test of tests/torch_wrc is about (by its module and name)."""
    if module.endswith("test_adaptive_conv_op"):
        return "adaptive_conv"
    if module.endswith("test_neighbourhood_attention_op"):
        return "neighbourhood_attention"
    if not module.endswith("test_wrc_ops"):
        return None
    if "spectral" in name:
        return "lr_spectral_solve"
    return "decimate" if "decimate" in name else "block_solve"


# ----------------------------------------------------------------------------------------------------------------
# 3. benchmarks
# ----------------------------------------------------------------------------------------------------------------


def run_benchmark_step(bench: Benchmark, device: str, out: Path, logs: Path, budget_s: float, smoke: bool) -> Step:
    step = Step(f"bench_{bench.name}", log=logs / f"bench_{bench.name}_{device}.log")
    if not (REPO_ROOT / "benchmarks" / f"bench_{bench.name}.py").exists():
        step.status = "skipped (not in this checkout)"
        return step
    if smoke and bench.smoke_args is None:
        step.status = "skipped (no smoke sizes)"
        return step
    args = ["--device", device, *(bench.smoke_args if smoke else bench.args)]
    log = step.log
    if smoke:  # in this process: the interpreter, torch and timm load once
        start = time.perf_counter()
        try:
            with open(log, "w") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                run_benchmark(bench.name, args, out)
            step.status = "ok"
        except BaseException as err:  # noqa: BLE001  (SystemExit included: report it, run the next step)
            step.status = f"failed ({type(err).__name__}: {str(err)[:80]})"
            with open(log, "a") as handle:
                import traceback

                traceback.print_exc(file=handle)
        step.seconds = time.perf_counter() - start
    else:
        cmd = [sys.executable, "-m", "benchmarks.gpu_suite", "--worker", bench.name, str(out), *args]
        step.status, step.seconds = run_process(cmd, log, budget_s)
    result = out / f"{bench.name}_{torch_device_type(device)}.json"
    step.output = str(result) if result.exists() and step.ok else ""
    return step


def torch_device_type(device: str) -> str:
    return device.split(":")[0]


# ----------------------------------------------------------------------------------------------------------------
# 4. targets and summary
# ----------------------------------------------------------------------------------------------------------------


def load_results(out: Path, name: str, device: str) -> object | None:
    path = out / f"{name}_{torch_device_type(device)}.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["results"]
    except (json.JSONDecodeError, KeyError):
        return None


def target(label: str, measured: str | None, passed: bool | None) -> dict:
    status = "missing" if measured is None else ("pass" if passed else "FAIL")
    return {"target": label, "measured": measured if measured is not None else "no result", "status": status}


def evaluate_targets(out: Path, device: str, junit: Path | None) -> list[dict]:
    """The issue's targets against the results of this run (``missing`` where a result is absent)."""
    rows = []
    inference = load_results(out, "inference", device) or []
    pick = {r["upsampler"]: r["median_ms"] for r in inference if r.get("batch") == 1 and r.get("image_size") == 448}
    wrc_ms, lift_ms = pick.get("wrc"), pick.get("lift")
    rows.append(target("WRC upsampler at 448, batch 1: <= 3 ms", None if wrc_ms is None else f"{wrc_ms:.2f} ms",
                       wrc_ms is not None and wrc_ms <= 3.0))
    ratio = wrc_ms / lift_ms if wrc_ms is not None and lift_ms else None
    rows.append(target("WRC upsampler at 448, batch 1: <= 1.5x LiFT's time",
                       None if ratio is None else f"{ratio:.2f}x ({lift_ms:.2f} ms LiFT)",
                       ratio is not None and ratio <= 1.5))
    ops = load_results(out, "wrc_ops", device) or {}
    block = [r for r in ops.get("extension_vs_reference", []) if r["op"] == "block_solve"]
    for mode, label in (("forward", "forward"), ("forward_backward", "forward+backward")):
        worst = min(block, key=lambda r, m=mode: r[f"speedup_{m}"]) if block else None
        rows.append(target(f"fused block solve >= 10x the reference, {label}",
                           None if worst is None else f"min {worst[f'speedup_{mode}']:.1f}x (batch {worst['batch']}, "
                                                      f"grid {worst['grid']})",
                           worst is not None and worst[f"speedup_{mode}"] >= 10))
    from benchmarks.bench_adaptive_conv import TABLE6

    table6 = [r for r in load_results(out, "adaptive_conv", device) or [] if tuple(r["shape"]) in set(TABLE6)]
    for key, label, goal in (("memory_reduction_forward_backward", "adaptive conv >= 10x less memory than unfold, "
                              "fwd+bwd (Table 6)", 10), ("speedup_forward_backward", "adaptive conv >= 5x faster "
                              "fwd+bwd than unfold (Table 6)", 5)):
        worst = min(table6, key=lambda r, k=key: r[k]) if table6 else None
        rows.append(target(label, None if worst is None else f"min {worst[key]:.1f}x at {tuple(worst['shape'])}",
                           worst is not None and worst[key] >= goal))
    tests = summarise_junit(junit) if junit is not None and junit.exists() else None
    for kind, label in (("parity", "parity 1e-5 with the float64 CPU reference, every custom op"),
                        ("gradcheck", "float64 gradcheck, every custom op")):
        if tests is None:
            rows.append(target(label, None, None))
            continue
        per_op = tests["coverage"][kind]
        covered = [op for op, outcomes in per_op.items() if outcomes and all(o == "passed" for o in outcomes)]
        total = sum(len(o) for o in per_op.values())
        passed = sum(o.count("passed") for o in per_op.values())
        rows.append(target(label, f"{len(covered)}/{len(CUSTOM_OPS)} ops, {passed}/{total} tests",
                           len(covered) == len(CUSTOM_OPS)))
    if tests is not None:
        counts = tests["counts"]
        rows.append(target(f"every device test passes on {device}", tests["line"],
                           counts["failed"] == counts["error"] == 0 and counts["passed"] > 0))
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_summary(out: Path, device: str, steps: list[Step], targets: list[dict], seconds: float) -> Path:
    import torch

    from wrc.provenance import environment

    env = environment(device if device == "cpu" or torch.cuda.is_available() else "cpu")
    name = f"gpu_suite_{torch_device_type(device)}"
    step_rows = [[s.name, s.status, f"{s.seconds:.0f}", Path(s.output).name if s.output else ""] for s in steps]
    target_rows = [[t["target"], t["measured"], t["status"]] for t in targets]
    lines = [f"# {name}", "", f"- device: {env['device']}", f"- date: {env['date']}", f"- torch: {env['torch']}",
             f"- commit: {env['commit']}", f"- command: `{env['command']}`", f"- total: {seconds:.0f} s", "",
             "## Targets", "", *markdown_table(["target", "measured", "status"], target_rows), "",
             "## Steps", "", *markdown_table(["step", "status", "seconds", "result"], step_rows), ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(lines))
    record = {"environment": env, "seconds": seconds, "targets": targets,
              "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds,
                         "result": Path(s.output).name if s.output else None} for s in steps]}
    (out / f"{name}.json").write_text(json.dumps(record, indent=2))
    return out / f"{name}.md"


def print_summary(steps: list[Step], targets: list[dict], summary: Path, logs: Path, seconds: float) -> None:
    print(f"\n{'step':<22} {'status':<34} {'s':>5}")
    for s in steps:
        print(f"{s.name:<22} {s.status[:34]:<34} {s.seconds:>5.0f}")
    print(f"\n{'target':<76} {'measured':<40} status")
    for t in targets:
        print(f"{t['target'][:76]:<76} {t['measured'][:40]:<40} {t['status']}")
    print(f"\ntotal {seconds:.0f} s; summary {summary}; logs {logs}")


# ----------------------------------------------------------------------------------------------------------------


def describe_machine(device: str) -> str:
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible"
    return f"gpu_suite on {device}: torch {torch.__version__}, {gpu}, nvcc {shutil.which('nvcc') or 'not on PATH'}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1:])
        return 0
    if argv[:1] == ["--jit-build"]:
        jit_build()
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CI: every step on the CPU at tiny sizes, no build")
    parser.add_argument("--skip-build", action="store_true", help="use the compiled extension as it is")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {DEFAULT_OUT}; with --smoke a temporary folder)")
    parser.add_argument("--logs", type=Path, default=None, help="folder for each step's output (default: temporary)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which no step starts (default 470; --smoke: 300)")
    parser.add_argument("--only", nargs="+", default=None, metavar="STEP",
                        choices=["build", "tests", *(f"bench_{b.name}" for b in BENCHMARKS)],
                        help="run only these steps (build, tests, bench_<name>)")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    out = (args.out or (Path(tempfile.mkdtemp(prefix="gpu_suite_smoke_")) if args.smoke
                        else REPO_ROOT / DEFAULT_OUT)).resolve()
    logs = (args.logs or Path(tempfile.mkdtemp(prefix="gpu_suite_logs_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    deadline = args.deadline if args.deadline is not None else (300.0 if args.smoke else 470.0)
    started = time.perf_counter()

    def left() -> float:
        return deadline - (time.perf_counter() - started)

    steps: list[Step] = []
    plan = [p for p in ("build", "tests", *BENCHMARKS)
            if args.only is None or (p if isinstance(p, str) else f"bench_{p.name}") in args.only]
    print(describe_machine(device), flush=True)
    for index, item in enumerate(plan, 1):
        label = item if isinstance(item, str) else f"bench_{item.name}"
        budget = SMOKE_BUDGET_S if args.smoke else {"build": BUILD_BUDGET_S, "tests": TESTS_BUDGET_S}.get(
            label, getattr(item, "budget_s", 0.0))
        print(f"[{index}/{len(plan)}] {label} ({time.perf_counter() - started:.0f} s elapsed)", flush=True)
        if item == "build" and (args.smoke or args.skip_build):
            steps.append(Step("build", "skipped (--smoke)" if args.smoke else "skipped (--skip-build)"))
            continue
        if left() < 15:
            steps.append(Step(label, f"skipped (deadline {deadline:.0f} s)"))
            continue
        budget = min(budget, left())
        if item == "build":
            steps.append(build(logs, budget))
            if not steps[-1].ok:  # nothing below can run on the GPU without the kernels
                print("\n".join("        | " + line for line in log_tail(steps[-1].log, 15).splitlines()))
                steps += [Step(p if isinstance(p, str) else f"bench_{p.name}", "skipped (build failed)")
                          for p in plan[index:]]
                break
        elif item == "tests":
            steps.append(run_tests(device, logs, budget, args.smoke)[0])
        else:
            steps.append(run_benchmark_step(item, device, out, logs, budget, args.smoke))
        last = steps[-1]
        print(f"        {last.status} in {last.seconds:.0f} s" + (f": {last.output}" if last.output else ""),
              flush=True)
        if last.status.startswith(("failed", "timeout")) and last.log is not None:
            print("\n".join("        | " + line for line in log_tail(last.log, 8).splitlines()))
    junit = logs / f"pytest_{device}.xml"
    targets = evaluate_targets(out, device, junit)
    seconds = time.perf_counter() - started
    summary = write_summary(out, device, steps, targets, seconds)
    print_summary(steps, targets, summary, logs, seconds)
    ran_ok = all(s.ok or (s.status.startswith("skipped (") and "deadline" not in s.status) for s in steps)
    return 0 if ran_ok else 1


if __name__ == "__main__":
    sys.exit(main())
