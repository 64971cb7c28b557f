"""Guarantee: FrozenBackbone refuses images that would give plausible but wrong features (uint8 pixels, 0-255 or
mean/std-normalised floats, NaN or infinity, wrong shapes), naming ``image`` and what it expects."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("image, match", [
    (torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8), r"image must be a floating-point tensor .* uint8"),
    (torch.rand(1, 3, 32, 32) * 255, r"image must hold RGB values in \[0, 1\]; got values in \[0.*, 25\d"),
    ((torch.rand(1, 3, 32, 32) - 0.45) / 0.225, r"image must hold RGB values in \[0, 1\]; got values in \[-"),
    (torch.rand(1, 3, 32, 32).index_put_((torch.tensor(0),) * 4, torch.tensor(float("nan"))), "image must be finite"),
    (torch.rand(1, 3, 32, 32).index_put_((torch.tensor(0),) * 4, torch.tensor(float("inf"))), "image must be finite"),
    (torch.rand(3, 32, 32), r"image must be \(B, 3, H, W\) RGB in \[0, 1\]; got shape \(3, 32, 32\)"),
    (torch.rand(1, 4, 32, 32), r"image must be \(B, 3, H, W\) RGB in \[0, 1\]; got shape \(1, 4, 32, 32\)"),
], ids=["uint8", "0_255", "normalised", "nan", "inf", "3d", "4_channels"])
def test_bad_images_are_refused(test_vit, image, match):
    with pytest.raises(ValueError, match=match):
        test_vit(image)
    with pytest.raises(ValueError, match=match):
        test_vit(image, stride=8)  # the overlapping-patch path checks too
    with pytest.raises(ValueError, match=match):
        test_vit.prepare(image)


def test_rounding_outside_the_unit_range_is_tolerated(test_vit):
    image = torch.rand(1, 3, 32, 32)
    image[0, 0, 0, 0], image[0, 0, 0, 1] = 1 + 5e-4, -5e-4
    assert test_vit(image).shape == (1, 64, 2, 2)
    assert test_vit(image.half().float()).shape == (1, 64, 2, 2)
