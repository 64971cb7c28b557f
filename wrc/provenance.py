"""Where a result came from: the code version, the machine and the command, recorded in one place.

Every checkpoint, evaluation record and benchmark result asks this module, so they agree on what a
"commit" is (the short SHA plus whether the tree had uncommitted changes) and on how a command is
written down: as a user would type it (``python -m evaluation protocol=fidelity``), never with this
machine's interpreter or checkout paths.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import wrc

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _commit() -> str | None:
    """The checkout's short commit; None for an installed package (whose folder may sit inside someone else's
    repository, e.g. a virtual environment in a project: that repository's commit is not this code's)."""
    return _git("rev-parse", "--short", "HEAD") if (REPO_ROOT / ".git").exists() else None


def code_identity() -> dict[str, object]:
    """``{"version", "commit"}``: the code that results depend on, for resume checks. Not the dirty flag: an
    uncommitted edit must not refuse every rerun of work in progress (and ``git status`` is the slow call)."""
    return {"version": wrc.__version__, "commit": _commit()}


def weights_digest(module: torch.nn.Module | None) -> str | None:
    """SHA-256 of a module's state (names, dtypes, shapes and values): two upsamplers with the same name and
    arguments but other weights (one trained further in the same run directory) are told apart. None for None."""
    if module is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


RESULTS_PATHSPEC = ":(exclude)benchmarks/results"  # results are not code: a benchmark rewrites them as it runs


def code_version() -> dict[str, object]:
    """``{"version", "commit", "dirty"}``: the package version, the git commit (None outside a checkout) and
    whether tracked files other than committed results differ from it (None when unknown): a benchmark that
    rewrites its own tables before a record is written has not changed the code that produced it."""
    identity = code_identity()
    status = (_git("status", "--porcelain", "--untracked-files=no", "--", ".", RESULTS_PATHSPEC)
              if identity["commit"] else None)
    return {**identity, "dirty": None if status is None else bool(status)}


def code_version_string() -> str:
    """``0.1.0+abc1234`` (``+abc1234.dirty`` with uncommitted changes): the short form for logs and metadata."""
    info = code_version()
    if not info["commit"]:
        return str(info["version"])
    return f"{info['version']}+{info['commit']}" + (".dirty" if info["dirty"] else "")


def command_line(argv: list[str] | None = None, module: str | None = None) -> str:
    """The command as a user would type it: ``python -m pkg.module args`` for code run with ``-m``,
    ``python path/in/the/checkout.py args`` for scripts, the program's name otherwise (e.g. ``pytest``).

    By default the running process's ``sys.argv`` and ``__main__`` module; pass ``argv`` (and the module run
    with ``-m``, if any) to describe another command."""
    if argv is None:
        argv = list(sys.argv)
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None and spec.name else None
    if not argv:
        return "python"
    args = [_quote(a) for a in argv[1:]]
    if module:
        return " ".join([f"python -m {module.removesuffix('.__main__')}", *args])
    script = Path(argv[0])
    try:
        relative = script.resolve().relative_to(REPO_ROOT).as_posix()
    except (ValueError, OSError):
        relative = None
    program = f"python {relative}" if relative and relative.endswith(".py") else script.name
    return " ".join([program, *args])


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " \t\"$*?[]{}()|&;<>") else arg


def device_name(device: torch.device | str) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``AMD EPYC (x86_64), 2 threads``: CPU results of one architecture differ by
    model (vector width, caches), so the model is named where the OS tells it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    architecture = platform.machine() or platform.processor() or "unknown"
    model = _cpu_model()
    name = f"{model} ({architecture})" if model else f"{architecture} CPU"
    return f"{name}, {torch.get_num_threads()} threads"


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``cpuinfo`` (Linux's /proc/cpuinfo), or '' where there is none."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name") and ":" in line:
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ""


def environment(device: torch.device | str) -> dict[str, object]:
    """Device, library versions, date, code version and command: the header of every result."""
    version = code_version()
    return {
        "device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "commit": version["commit"] or "", "dirty": version["dirty"],
        "command": command_line(),
    }
