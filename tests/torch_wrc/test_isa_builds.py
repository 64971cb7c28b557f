"""The CPU kernels' AVX2 and baseline builds (torch_wrc/csrc/cpu/isa.h) give the same bits: the same
inputs through a process forced onto the baseline build (WRC_BASELINE_ISA=1) and through this one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

torch_wrc = pytest.importorskip("torch_wrc")
pytestmark = pytest.mark.skipif(not torch_wrc.is_available(), reason="torch_wrc not built")


def cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return " avx2" in f.read()
    except OSError:
        return False

SCRIPT = """
import sys, torch, torch_wrc
torch.manual_seed(0)
outputs = []
for dtype in (torch.float32, torch.float64):
    for channels in (7, 40, 416):
        x = torch.randn(2, 1500, channels, dtype=dtype) * 3 + 1
        residual = torch.randn(2, 1500, channels, dtype=dtype)
        scale, shift, residual_scale = (torch.randn(2, channels, dtype=dtype) for _ in range(3))
        outputs += list(torch.ops.wrc.channel_moments(x))
        torch.ops.wrc.channel_affine_(x, scale, shift, residual, residual_scale, True)
        outputs.append(x)
        y, z = (torch.randn(2, channels, *size, dtype=dtype).contiguous(memory_format=torch.channels_last)
                for size in ((5, 6), (10, 12)))
        kernel = torch.rand(channels, 2, 2, dtype=dtype) + 0.1
        for maps in (1, channels):
            w_low = (torch.rand(2, maps, 5, 6, dtype=dtype) * 3).contiguous(memory_format=torch.channels_last)
            w_high = (torch.rand(2, maps, 10, 12, dtype=dtype) + 0.1).contiguous(memory_format=torch.channels_last)
            outputs.append(torch.ops.wrc.block_solve_channels_last(y, z, kernel, w_low, w_high))
torch.save(outputs, sys.argv[1])
"""


def run(path, baseline: bool):
    env = {k: v for k, v in os.environ.items() if k != "WRC_BASELINE_ISA"}
    if baseline:
        env["WRC_BASELINE_ISA"] = "1"
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True, timeout=300)
    return torch.load(path)


@pytest.mark.skipif(not cpu_has_avx2(), reason="no AVX2 here: both runs would take the baseline build")
def test_baseline_and_avx2_builds_agree_bit_for_bit(tmp_path):
    default, baseline = run(tmp_path / "default.pt", False), run(tmp_path / "baseline.pt", True)
    assert len(default) == len(baseline) == 30
    for a, b in zip(default, baseline, strict=True):
        assert torch.equal(a, b)
