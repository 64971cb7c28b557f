"""The synthetic benchmark: scenes whose class is not in the colour, an oracle whose field is exact, the
metrics it adds, and the ranking on a small fixed seed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from evaluation.metrics import BoundaryFScore, class_boundaries
from evaluation.records import collect, read_record
from evaluation.synthetic.benchmark import main as benchmark_main
from evaluation.synthetic.oracle import OracleBackbone, chromaticity
from evaluation.synthetic.scenes import CHROMA_GAP, CLASSES, SyntheticScenes, generate_scene
from evaluation.tables import build_table
from evaluation.tables import main as tables_main


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed, 96) for seed in range(12)]


def test_scenes_are_deterministic_and_every_region_has_its_own_colour(scenes):
    again = generate_scene(3, 96)
    assert torch.equal(again.image, scenes[3].image) and torch.equal(again.classes, scenes[3].classes)
    assert not torch.equal(generate_scene(4, 96).image, scenes[3].image)
    for scene in scenes:
        assert 0 <= scene.image.min() and scene.image.max() <= 1
        chroma = chromaticity(scene.image[None])[0]
        per_region = []
        for region in scene.regions.unique():
            values = chroma[:, scene.regions == region]
            assert (values.amax(dim=1) - values.amin(dim=1)).max() < 1e-5  # texture leaves the colour alone
            classes = scene.classes[scene.regions == region].unique()
            assert len(classes) == 1  # one class per region
            per_region.append(values[:, 0])
        for i in range(len(per_region)):
            for j in range(i):
                assert (per_region[i] - per_region[j]).abs().max() >= CHROMA_GAP - 1e-6


def test_scene_masks_are_the_visible_regions_and_collate_like_sa1b_masks():
    """LoftUp's mask term reads the scenes' regions in place of SAM masks: one mask per visible region, disjoint,
    covering the image, each exactly its region; a batch pads them with empty masks (wrc.data.datasets)."""
    from wrc.data.datasets import stack_batch

    plain, masked = SyntheticScenes(3, 64), SyntheticScenes(3, 64, masks=True)
    assert not plain.delivers_masks and "masks" not in plain[0] and masked.delivers_masks
    items = [masked[i] for i in range(3)]
    for index, item in enumerate(items):
        regions = masked.scene(index).regions
        assert item["masks"].dtype == torch.bool and torch.equal(item["image"], plain[index]["image"])
        assert torch.equal(item["masks"].sum(0), torch.ones(64, 64, dtype=torch.int64))  # disjoint, covering
        for mask, region in zip(item["masks"], regions.unique(), strict=True):
            assert torch.equal(mask, regions == region)
    batch = stack_batch(items)
    count = max(item["masks"].shape[0] for item in items)
    assert batch["masks"].shape == (3, count, 64, 64) and len({item["masks"].shape[0] for item in items}) > 1
    for row, item in zip(batch["masks"], items, strict=True):
        assert torch.equal(row[: len(item["masks"])], item["masks"]) and not row[len(item["masks"]):].any()


def test_class_is_not_recoverable_from_local_colour():
    """The best lookup from a pixel's quantised colour to a class (fitted on training scenes) does no better
    on held-out scenes than always answering the most frequent class."""
    train, test = SyntheticScenes(48, 64), SyntheticScenes(24, 64, train=False)

    def pixels(dataset):
        items = [dataset.scene(i) for i in range(len(dataset))]
        colours = torch.stack([s.image for s in items]).permute(0, 2, 3, 1).reshape(-1, 3)
        bins = (colours * 8).long().clamp(max=7) @ torch.tensor([64, 8, 1])
        return bins, torch.stack([s.classes for s in items]).flatten()

    bins, labels = pixels(train)
    counts = torch.zeros(512, len(CLASSES)).index_put_((bins, labels), torch.ones_like(bins, dtype=torch.float),
                                                       accumulate=True)
    lookup = counts.argmax(dim=1)
    test_bins, test_labels = pixels(test)
    colour_accuracy = (lookup[test_bins] == test_labels).float().mean().item()
    majority = test_labels.bincount(minlength=len(CLASSES)).max().item() / test_labels.numel()
    assert colour_accuracy < majority + 0.05, (colour_accuracy, majority)


def test_oracle_field_is_the_ground_truth_of_the_scene(scenes):
    """Per pixel: the embedding of the generator's class plus the colour map of the region's chromaticity."""
    oracle = OracleBackbone(channels=16, patch_size=8)
    images = torch.stack([s.image for s in scenes])
    classes = torch.stack([s.classes for s in scenes])
    field = oracle.dense(images)
    expected = (oracle.class_embedding[:, classes].permute(1, 0, 2, 3)
                + torch.einsum("ck,bkhw->bchw", oracle.colour_map, chromaticity(images) - 1 / 3))
    torch.testing.assert_close(field, expected, atol=0.03, rtol=0)  # soft class probabilities are >= 0.97
    assert torch.equal(oracle.class_probabilities(images).argmax(dim=1), classes)


def test_oracle_reads_zoomed_and_flipped_scenes_the_same(scenes):
    oracle = OracleBackbone()
    images, classes = torch.stack([s.image for s in scenes]), torch.stack([s.classes for s in scenes])
    flipped = oracle.class_probabilities(images.flip(-1)).argmax(dim=1)
    assert torch.equal(flipped, classes.flip(-1))
    zoomed = oracle.class_probabilities(F.interpolate(images, scale_factor=2, mode="bilinear")).argmax(dim=1)
    assert (zoomed == classes.repeat_interleave(2, 1).repeat_interleave(2, 2)).float().mean() > 0.95


def test_oracle_tokens_are_mixed_patch_averages(scenes):
    image = scenes[0].image[None]
    oracle, pure = OracleBackbone(mixing=0.25), OracleBackbone(mixing=0.0)
    field = oracle.dense(image)
    means = F.avg_pool2d(field, 8)
    torch.testing.assert_close(pure(image), means)
    tokens = oracle(image)
    i, j = 5, 7  # an interior token: 0.75 x its patch mean + 0.25 x the mean of its 3 x 3 neighbourhood
    torch.testing.assert_close(tokens[0, :, i, j], 0.75 * means[0, :, i, j]
                               + 0.25 * means[0, :, i - 1 : i + 2, j - 1 : j + 2].mean(dim=(1, 2)))
    assert oracle(image, stride=4).shape[-2:] == (23, 23)  # overlapping patches, as the strided baseline asks
    assert oracle.grid_size(96, 96) == (12, 12) and oracle.embed_dim == 32


def test_oracle_bad_arguments():
    with pytest.raises(ValueError, match="mixing"):
        OracleBackbone(mixing=1.0)
    with pytest.raises(ValueError, match="channels"):
        OracleBackbone(channels=2)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        OracleBackbone().dense(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="smaller than one"):
        OracleBackbone()(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="size"):
        generate_scene(0, 8)


def test_boundary_fscore_hand_computed():
    label = torch.zeros(1, 8, 8, dtype=torch.long)
    label[:, :, 4:] = 1  # a vertical edge: pixels of column 3 have a right neighbour of another class
    assert class_boundaries(label)[0].nonzero()[:, 1].unique().tolist() == [3]
    exact, off_by_two, off_by_three = label.clone(), torch.zeros_like(label), torch.zeros_like(label)
    off_by_two[:, :, 6:] = 1
    off_by_three[:, :, 7:] = 1
    for prediction, expected in ((exact, 1.0), (off_by_two, 1.0), (off_by_three, 0.0)):
        score = BoundaryFScore(tolerance=2)
        score.update(prediction, label)
        assert score.compute()["boundary_f"] == expected
    half = torch.zeros_like(label)  # the predicted edge follows the true one in the top half only
    half[:, :4, 4:] = 1
    score = BoundaryFScore(tolerance=0)
    score.update(half, label)
    result = score.compute()
    # predicted edge: column 3 of rows 0-3 (4 px, all on the label's edge) and row 3 of columns 4-7 (4 px, off it)
    assert result["boundary_precision"] == 4 / 8 and result["boundary_recall"] == 4 / 8
    with pytest.raises(ValueError, match="tolerance"):
        BoundaryFScore(tolerance=-1)


def test_synthetic_table_ranks_by_cosine(tmp_path):
    for name, cosine in (("bilinear", 0.90), ("wrc", 0.95)):  # version-0 records, as committed before the schema
        metrics = {"cosine": cosine, "rel_l2": 0.3, "cosine_2x": 0.9, "miou": 0.8, "boundary_f": 0.7}
        record = {"protocol": "synthetic", "model": {"name": name}, "metrics": metrics}
        (tmp_path / f"{name}.json").write_text(json.dumps(record))
    markdown, _ = build_table(collect([tmp_path]).records, "synthetic", ["cosine", "miou"])
    assert markdown.splitlines() == ["| upsampler | cosine ↑ | miou ↑ |", "| --- | ---: | ---: |",
                                     "| wrc | 0.9500 | 0.8000 |", "| bilinear | 0.9000 | 0.8000 |"]
    assert tables_main(["synthetic", str(tmp_path)]) == 0


@pytest.fixture(scope="module")
def small_benchmark(tmp_path_factory):
    """The benchmark at test scale, once for the tests below: four methods, every task (4 generated items each)."""
    tmp = tmp_path_factory.mktemp("benchmark")
    out = tmp / "results"
    assert benchmark_main(["--methods", "bilinear", "nearest", "wrc", "converse2d", "--steps", "100",
                           "--train-scenes", "64", "--test-scenes", "8", "--probe-scenes", "6", "--task-items", "4",
                           "--work-dir", str(tmp / "runs"), "--out", str(out), "--device", "cpu"]) == 0
    return tmp, out


def test_wrc_clearly_beats_converse2d_and_bilinear_on_a_fixed_seed(small_benchmark):
    """The ranking the benchmark exists to show, at test scale: WRC trained with its own objective for 100 steps
    comes clearly closer to the ground-truth field than Converse2D (the same network and budget with scalar
    weights), which beats bilinear, which beats nearest; records and the table are written. (Class-level metrics
    need the full budget: benchmarks/results/synthetic/synthetic.md.)

    Only claims that hold across training seeds: each assertion here and in the next test also held with the same
    command at --seed 1 and --seed 2 (2026-12-01; WRC cosine 0.9713 / 0.9746, Converse2D 0.9569 / 0.9596, rel_l2
    0.234 / 0.225 against 0.293 / 0.286), so CI runs seed 0 only."""
    tmp_path, out = small_benchmark
    results = {p.stem: read_record(p).metrics for p in out.glob("*.json")}
    assert set(results) == {"ground_truth", "bilinear", "nearest", "wrc", "converse2d"}
    assert results["ground_truth"]["cosine"] == pytest.approx(1.0) and results["ground_truth"]["miou"] == 1.0
    wrc, converse2d = results["wrc"], results["converse2d"]
    bilinear, nearest = results["bilinear"], results["nearest"]
    assert wrc["cosine"] > converse2d["cosine"] + 0.005 and wrc["rel_l2"] < converse2d["rel_l2"] - 0.02
    assert wrc["cosine_2x"] > converse2d["cosine_2x"] and wrc["boundary_f"] > converse2d["boundary_f"]
    assert converse2d["cosine_2x"] > bilinear["cosine_2x"] + 0.01
    assert converse2d["cosine"] > bilinear["cosine"] + 0.005 and converse2d["rel_l2"] < bilinear["rel_l2"] - 0.01
    assert bilinear["cosine"] > nearest["cosine"] and bilinear["boundary_f"] > nearest["boundary_f"]
    table = (out / "synthetic.md").read_text()
    assert table.startswith("# synthetic\n\n- device: ") and "\n| upsampler | cosine ↑ | rel_l2 ↓ |" in table
    assert (tmp_path / "runs" / "wrc" / "checkpoints").is_dir()  # resumable run directory


def test_a_guided_upsampler_beats_bilinear_on_every_task(small_benchmark):
    """Each task's ground-truth version, scored through its protocol's own code on generated data: WRC (guided by
    the image, trained 100 steps on the field task's scenes) beats bilinear on every task's fine-grained
    metric, and the true field (ground_truth) is at least as good as both. PCK@0.1 is left out: at 10 % of the
    box both find the marker's region, and WRC's occasional far-off match weighs more there. PCK@0.05 is a claim of
    the full scale only (test_committed_claims.py: 0.879-0.891 against 0.837 in each of three seeds): at this scale
    WRC's PCK@0.05 was 0.816 / 0.834 / 0.876 at seeds 0-2 against bilinear's 0.858 (one thread; 0.845 at seed 0 with
    two threads, rounding alone), 0.76-0.85 against 0.84 with 8 items, and 0.863-0.907 against 0.858 after 200 steps
    (2026-12-02): no margin a CI machine keeps. PCK@0.01 held in all nine runs (0.05-0.18 against 0.01-0.04)."""
    _, out = small_benchmark
    finest = {"davis": ("jf_mean", "f_mean"), "spair": ("pck@0.01",), "object_discovery": ("corloc",),
              "salient": ("max_f", "iou")}
    for protocol, metrics in finest.items():
        scores = {p.stem: read_record(p).metrics for p in (out / protocol).glob("*.json")}
        assert set(scores) == {"ground_truth", "bilinear", "nearest", "wrc", "converse2d"}, protocol
        for metric in metrics:
            wrc, bilinear, truth = (scores[name][metric] for name in ("wrc", "bilinear", "ground_truth"))
            assert wrc > bilinear and truth >= max(wrc, bilinear) - 1e-9, (protocol, metric, wrc, bilinear, truth)
        assert (out / protocol / f"{protocol}.md").read_text().startswith(f"# {protocol}\n\n- device: ")
