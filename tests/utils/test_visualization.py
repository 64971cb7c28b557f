from __future__ import annotations

import torch

from utils.visualization import FeaturePCA, apply_ramp, comparison_figure, similarity_map


def test_pca_recovers_a_three_dimensional_signal():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3))[0]  # 16 x 3 orthonormal
    codes = torch.rand(3, 8, 8)
    features = torch.einsum("cd,dhw->chw", basis, codes)
    pca = FeaturePCA(features)
    rgb = pca.colorize(features)
    assert rgb.shape == (3, 8, 8) and rgb.min() >= 0 and rgb.max() <= 1
    # the projection keeps all the variance: reconstructing from 3 components is exact
    projected = (features.flatten(1).T - pca.mean) @ pca.components
    recon = projected @ pca.components.T + pca.mean
    torch.testing.assert_close(recon.T.reshape(16, 8, 8), features, atol=1e-5, rtol=1e-5)


def test_similarity_is_one_at_the_query():
    features = torch.randn(5, 10, 12)
    sim = similarity_map(features, (0.35, 0.5))
    assert sim.shape == (10, 12)
    assert sim[3, 6].item() == sim.max().item()
    assert abs(sim[3, 6].item() - 1) < 1e-6


def test_ramp_endpoints():
    rgb = apply_ramp(torch.tensor([[-1.0, 1.0]]))
    assert rgb.shape == (3, 1, 2)
    assert rgb[:, 0, 0].tolist() != rgb[:, 0, 1].tolist()


def test_comparison_figure_layout():
    maps = {"low-res": torch.randn(8, 4, 4), "bilinear": torch.randn(8, 8, 8)}
    figure = comparison_figure(torch.rand(3, 32, 32), maps, panel=64)
    assert figure.size == (3 * (64 + 4), 2 * (64 + 18) + 4)
