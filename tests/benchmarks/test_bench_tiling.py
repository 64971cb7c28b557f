"""benchmarks.bench_tiling at test scale: the worker measures in a fresh process and compares tiled with untiled."""

from __future__ import annotations

from benchmarks.bench_tiling import measure, summary, worker


def test_worker_measures_a_tiled_call_and_its_difference():
    spec = {"model": "bilinear", "size": 512, "mode": "tiled", "channels": 8, "factor": 4, "tile": 128,
            "compare_max": 512}
    row = worker(spec)
    assert row["tiles"] == 16 and row["exact"] and row["halo"] == 1
    assert row["rel_l2_vs_untiled"] <= 1e-6 and row["seconds"] > 0
    assert row["output_mib"] == 8 * 128 * 128 * 4 / 2**20


def test_measurement_runs_in_a_fresh_process():
    spec = {"model": "bilinear", "size": 256, "mode": "untiled", "channels": 8, "factor": 2, "tile": 128,
            "compare_max": 0}
    row = measure(spec)
    assert row["peak_mib"] >= 0 and row["working_mib"] == row["peak_mib"] - row["output_mib"]


def test_summary_fits_time_against_pixels_over_multi_tile_sizes():
    rows = [{"model": "m", "mode": "tiled", "size": s, "tiles": t, "seconds": s * s * 1e-6, "working_mib": w}
            for s, t, w in [(256, 1, 5.0), (512, 4, 9.0), (1024, 16, 10.0)]]
    result = summary(rows, ["m"])["m"]
    assert abs(result["time_vs_pixels_slope"] - 1) < 1e-9
    assert (result["working_mib_min"], result["working_mib_max"]) == (9.0, 10.0)
