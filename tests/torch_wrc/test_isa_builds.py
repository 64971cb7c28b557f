"""The CPU kernels' AVX-512, AVX2 and baseline builds (torch_wrc/csrc/cpu/isa.h) give the same bits: the same
inputs through processes forced onto the baseline build (WRC_BASELINE_ISA=1), onto AVX2 (WRC_NO_AVX512=1), and
through the CPU's best. (pixel_mlp's
FMA builds round differently by design: test_pixel_mlp_op.py holds each build to a float64 oracle.)"""

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
        image = torch.randn(2, channels, 5, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)
        kernels = torch.randn(channels, channels, 3, 3, dtype=dtype)
        outputs += [torch.ops.wrc.winograd_conv3x3(image, kernels, None, tile) for tile in (2, 4)]
torch.save(outputs, sys.argv[1])
"""


def run(path, **env_vars: str):
    env = {k: v for k, v in os.environ.items() if k not in ("WRC_BASELINE_ISA", "WRC_NO_AVX512")}
    env.update(env_vars)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, check=True, timeout=300)
    return torch.load(path)


@pytest.mark.skipif(not cpu_has_avx2(), reason="no AVX2 here: both runs would take the baseline build")
def test_baseline_avx2_and_avx512_builds_agree_bit_for_bit(tmp_path):
    """The CPU's best build (AVX-512 where it has it), AVX2 (WRC_NO_AVX512=1) and the baseline."""
    default = run(tmp_path / "default.pt")
    avx2 = run(tmp_path / "avx2.pt", WRC_NO_AVX512="1")
    baseline = run(tmp_path / "baseline.pt", WRC_BASELINE_ISA="1")
    assert len(default) == len(avx2) == len(baseline) == 42
    for a, b, c in zip(default, avx2, baseline, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
