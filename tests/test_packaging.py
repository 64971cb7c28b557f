"""The package as a user installs it: a wheel with the configs inside, working from any directory.

CI builds the wheel here (pure Python: WRC_BUILD_EXTENSION=0, since the editable install of the same CI run
already compiles and tests the kernels) and installs it into a fresh virtual environment that sees the
already-installed dependencies (torch, timm, hydra) but not the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DISTRIBUTION = "wrc-upsampling"
IMPORT_NAMES = ("wrc", "torch_wrc", "evaluation", "utils", "hydra_plugins")


def test_distribution_metadata():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself supports 3.10
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION  # "wrc" on the package index is an unrelated project
    assert project["license"] == "MIT" and (REPO_ROOT / "LICENSE").read_text().startswith("MIT License")
    assert project["scripts"] == {"wrc-train": "train_wrc:cli", "wrc-eval": "evaluation.__main__:cli"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "WRC_BUILD_EXTENSION": "0"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO_ROOT)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("wrc_upsampling-*.whl")
    return path


def test_wheel_carries_every_config_and_package_and_no_tests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO_ROOT / "config").as_posix() for p in (REPO_ROOT / "config").rglob("*.yaml"))
    missing = [c for c in configs if f"wrc/_config/{c}" not in names]
    assert not missing, f"configs left out of the wheel: {missing}"
    for package in IMPORT_NAMES:
        sources = [p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / package).rglob("*.py")]
        assert sources and not [s for s in sources if s not in names], package
    assert "train_wrc.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "outputs/"))]


@pytest.mark.slow
def test_installed_wheel_trains_and_evaluates_from_any_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, cwd=elsewhere, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
        return proc

    where = run(str(python), "-c", "import json, wrc, evaluation, train_wrc; from hydra_plugins.wrc_resolvers import "
                "find_config_dir; print(json.dumps([wrc.__file__, evaluation.__file__, str(find_config_dir())]))")
    for path in json.loads(where.stdout):  # the installed copy, not the checkout
        assert Path(path).is_relative_to(venv), path
    run_dir = elsewhere / "run"
    trained = run(str(bin_dir / "wrc-train"), "experiment=quickstart", "train.max_steps=2", "train.ckpt_every=2",
                  "optimizer.warmup_steps=1", "data.num_images=2", "data.batch_size=2", "data.image_size=64",
                  "evaluate.num_images=1", "evaluate.image_size=64", f"hydra.run.dir={run_dir}")
    assert "checkpoint: " in trained.stdout and (run_dir / "metrics.json").is_file()
    evaluated = run(str(python), "-m", "evaluation", "protocol=fidelity", "backbone=test_vit", f"checkpoint={run_dir}",
                    "protocol.num_images=1", "protocol.image_size=32")
    assert "fidelity / " in evaluated.stdout
    assert list((elsewhere / "outputs" / "eval" / "fidelity").rglob("result.json"))
