"""benchmarks/ua_probe_gap.py: its measures against hand-computed cases, and one tiny run through to its table."""

from __future__ import annotations

import json

import torch

from benchmarks import common
from benchmarks import ua_probe_gap as gap
from evaluation.synthetic.oracle import OracleBackbone
from evaluation.synthetic.scenes import generate_scene


def test_distance_to_edge_marks_the_pixels_whose_neighbourhood_stays_in_their_region():
    regions = torch.zeros(8, 8, dtype=torch.long)
    regions[:, 4:] = 1  # an edge between columns 3 and 4; the image border is no edge
    far = gap.distance_to_edge_at_least(regions, 1)
    assert far[:, [0, 1, 2, 5, 6, 7]].all() and not far[:, [3, 4]].any()
    assert gap.distance_to_edge_at_least(regions, 2)[:, [0, 1, 6, 7]].all()
    assert not gap.distance_to_edge_at_least(regions, 2)[:, 2:6].any()


def test_texture_split_is_the_luminance_term_an_output_carries():
    """field = truth + a (luminance - 1/2) v: the bright half's mean minus the dark half's is a (0.9 - 0.1) v."""
    luminance = torch.tensor([0.1, 0.9]).repeat(4, 4)  # vertical stripes, one pixel wide
    inside = torch.ones(4, 8, dtype=torch.bool)
    truth = torch.randn(5, 1, 1).expand(5, 4, 8)
    v, a = torch.tensor([3.0, 0.0, 4.0, 0.0, 0.0]), 0.25  # |v| = 5
    field = truth + a * (luminance - 0.5) * v[:, None, None]
    assert gap.texture_split(truth, luminance, inside, 1.0) == 0.0
    assert abs(gap.texture_split(field, luminance, inside, 2.0) - a * 0.8 * 5 / 2) < 1e-6


def test_the_true_field_has_no_split_and_no_error():
    scene, oracle = generate_scene(0, 64), OracleBackbone()
    truth = oracle.dense(scene.image[None])[0]
    found = gap.measure_scene(scene, {"truth": truth}, truth)["truth"]
    assert found["interior"] == 0.0 and found["edge"] == 0.0 and all(s < 1e-5 for s in found["splits"])


def test_a_tiny_run_writes_its_record_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert gap.main(["--scenes", "1", "--image-size", "64", "--name", "gap"]) == 0
    record = json.loads((tmp_path / "gap.json").read_text())
    assert set(record["results"]) == {"upsample_anything", "bilinear", "ground_truth"}
    assert record["results"]["ground_truth"]["interior_error"] == 0.0
    assert (tmp_path / "gap.md").read_text().startswith("# gap\n\n- device:")
