"""The field protocol resumes a killed run from its partial results, with the same metrics as an uninterrupted run,
and never mixes in another run's."""

from __future__ import annotations

import pytest
import torch

from evaluation.protocol import get_protocol
from evaluation.protocols.synthetic import PARTIAL
from evaluation.run_identity import StaleRunError
from wrc.extractor import DenseFeatureExtractor
from wrc.upsamplers import create_upsampler

SETTINGS = {"image_size": 32, "test_scenes": 6, "probe_scenes": 4, "batch_size": 2}


class Killed(Exception):
    """Stands for the process being killed mid-run."""


def extractor_with_budget(calls: list[int], budget: int | None = None) -> DenseFeatureExtractor:
    """A bilinear extractor that counts its upsample calls in ``calls`` and dies after ``budget`` of them."""
    protocol = get_protocol("synthetic")
    oracle = protocol.make_backbone(protocol.settings(SETTINGS))
    upsampler = create_upsampler("bilinear", oracle.embed_dim, oracle.patch_size)
    upsample_to = upsampler.upsample_to

    def counted(*args, **kwargs):
        if budget is not None and len(calls) >= budget:
            raise Killed
        calls.append(1)
        return upsample_to(*args, **kwargs)

    upsampler.upsample_to = counted
    return DenseFeatureExtractor(oracle, upsampler.eval())


def run(extractor: DenseFeatureExtractor, run_dir, **changes):
    protocol = get_protocol("synthetic")
    return protocol.run(extractor, protocol.settings({**SETTINGS, **changes}), run_dir)


# killed fitting the probe, in the first test batch, before and inside the last one
@pytest.mark.parametrize("budget", [1, 3, 6, 7])
def test_a_killed_run_resumes_to_the_uninterrupted_metrics_without_redoing_work(tmp_path, budget):
    whole_calls: list[int] = []
    whole = run(extractor_with_budget(whole_calls), tmp_path / "whole").metrics
    # probe scenes: 2 batches, one call each; test scenes: 3 batches, two calls each (pixel grid and 2x)
    assert len(whole_calls) == 2 + 2 * 3

    first: list[int] = []
    with pytest.raises(Killed):
        run(extractor_with_budget(first, budget), tmp_path / "resumed")
    second: list[int] = []
    resumed = run(extractor_with_budget(second), tmp_path / "resumed").metrics

    assert len(first) + len(second) < len(whole_calls) + 2  # at most the killed batch's work is done twice
    assert resumed["seconds_per_image"] > 0  # every batch's own time was kept, also those of the killed call
    assert {k: v for k, v in whole.items() if k != "seconds_per_image"} == {
        k: v for k, v in resumed.items() if k != "seconds_per_image"}
    partial = tmp_path / "resumed" / PARTIAL
    assert (partial / "probe.pt").is_file() and not list(partial.glob("probe_features*"))  # dropped once fitted


def test_a_rerun_of_a_finished_run_upsamples_nothing_and_reports_the_same_metrics_and_time(tmp_path):
    first = run(extractor_with_budget([]), tmp_path).metrics
    again: list[int] = []
    assert run(extractor_with_budget(again), tmp_path).metrics == first
    assert again == []


def test_the_time_per_image_is_the_batches_own_time_over_the_scenes_even_with_a_short_last_batch(tmp_path):
    metrics = run(extractor_with_budget([]), tmp_path, test_scenes=5).metrics  # batches of 2, 2 and 1 scenes
    batches = sorted((tmp_path / PARTIAL).glob("test_*.pt"))
    assert [len(torch.load(b)["cosine"]) for b in batches] == [2, 2, 1]
    assert metrics["seconds_per_image"] == pytest.approx(sum(torch.load(b)["seconds"] for b in batches) / 5)


def test_probe_features_left_by_a_kill_after_the_probe_was_saved_are_removed(tmp_path):
    run(extractor_with_budget([]), tmp_path)
    leftover = tmp_path / PARTIAL / "probe_features_00000.pt"
    torch.save({"features": torch.zeros(1)}, leftover)
    run(extractor_with_budget([]), tmp_path)
    assert not leftover.exists()


def test_another_runs_partial_results_are_refused(tmp_path):
    with pytest.raises(Killed):
        run(extractor_with_budget([], 3), tmp_path)
    with pytest.raises(StaleRunError, match=r"settings.seed: 0 -> 1"):
        run(extractor_with_budget([]), tmp_path, seed=1)


def test_the_same_method_with_other_weights_is_another_run(tmp_path):
    """An upsampler trained in memory has no checkpoint to tell two trainings apart: its weights do."""
    protocol = get_protocol("synthetic")
    oracle = protocol.make_backbone(protocol.settings(SETTINGS))
    torch.manual_seed(0)
    upsampler = create_upsampler("resize_conv", oracle.embed_dim, oracle.patch_size).eval()
    run(DenseFeatureExtractor(oracle, upsampler), tmp_path)
    with torch.no_grad():
        next(upsampler.parameters()).add_(0.1)  # trained further, same name and arguments
    with pytest.raises(StaleRunError, match="weights: "):
        run(DenseFeatureExtractor(oracle, upsampler), tmp_path)


def test_partial_results_without_their_identity_are_refused(tmp_path):
    with pytest.raises(Killed):
        run(extractor_with_budget([], 3), tmp_path)
    (tmp_path / PARTIAL / "identity.json").unlink()
    with pytest.raises(StaleRunError, match="without their identity.json"):
        run(extractor_with_budget([]), tmp_path)


def test_an_unreadable_identity_is_named_as_such(tmp_path):
    with pytest.raises(Killed):
        run(extractor_with_budget([], 3), tmp_path)
    (tmp_path / PARTIAL / "identity.json").write_text("{not json")
    with pytest.raises(StaleRunError, match=r"identity.json cannot be read \(.*\): delete the folder"):
        run(extractor_with_budget([]), tmp_path)
