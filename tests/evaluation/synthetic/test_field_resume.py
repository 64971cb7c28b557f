"""The field protocol resumes a killed run from its partial results, with the same metrics as an uninterrupted run,
and never mixes in another run's."""

from __future__ import annotations

import pytest

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
    test_batches_before_the_kill = max(0, budget - 2) // 2
    assert ("seconds_per_image" in resumed) == (test_batches_before_the_kill == 0)  # timed only if all were timed
    assert {k: v for k, v in whole.items() if k != "seconds_per_image"} == {
        k: v for k, v in resumed.items() if k != "seconds_per_image"}
    partial = tmp_path / "resumed" / PARTIAL
    assert (partial / "probe.pt").is_file() and not list(partial.glob("probe_features*"))  # dropped once fitted


def test_a_rerun_of_a_finished_run_upsamples_nothing(tmp_path):
    run(extractor_with_budget([]), tmp_path)
    again: list[int] = []
    run(extractor_with_budget(again), tmp_path)
    assert again == []


def test_another_runs_partial_results_are_refused(tmp_path):
    with pytest.raises(Killed):
        run(extractor_with_budget([], 3), tmp_path)
    with pytest.raises(StaleRunError, match=r"settings.seed: 0 -> 1"):
        run(extractor_with_budget([]), tmp_path, seed=1)
