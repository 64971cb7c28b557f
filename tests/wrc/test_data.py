from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from wrc.data import ImageFolder, ResumableSampler, SampleImages, build_dataset, generate_scene, stack_batch
from wrc.data.augment import ColorJitter


def _write_images(root, names):
    for i, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.full((40 + i, 50, 3), 20 * i, dtype=np.uint8)
        Image.fromarray(array).save(path)


class TestImageFolder:
    def test_recursive_and_every_format(self, tmp_path):
        _write_images(tmp_path, ["a.jpg", "sub/b.PNG", "sub/deeper/c.webp", "d.jpeg"])
        (tmp_path / "notes.txt").write_text("not an image")
        ds = ImageFolder(tmp_path, 32, train=False)
        assert len(ds) == 4
        item = ds[0]
        assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() <= item["image"].max() <= 1

    def test_corrupt_files_are_skipped_and_counted(self, tmp_path):
        _write_images(tmp_path, ["a.png", "c.png"])
        (tmp_path / "b.png").write_bytes(b"definitely not a png")
        ds = ImageFolder(tmp_path, 16, train=False)
        items = [ds[i] for i in range(3)]
        assert [it["num_skipped"] for it in items] == [0, 1, 0]
        assert stack_batch(items)["num_skipped"] == 1

    def test_train_crops_depend_only_on_the_sample_seed(self, tmp_path):
        _write_images(tmp_path, ["a.png"])
        ds = ImageFolder(tmp_path, 16, train=True, min_scale=0.2)
        torch.testing.assert_close(ds[(0, 7)]["image"], ds[(0, 7)]["image"])

    def test_missing_root(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="data.root=.*does not exist"):
            ImageFolder(tmp_path / "nope", 16)

    def test_unset_root_says_what_to_pass(self):
        with pytest.raises(ValueError, match="data.root is not set: pass data.root=/path/to/images.*data=samples"):
            build_dataset({"name": "image_folder", "root": None, "image_size": 16})

    def test_empty_dataset(self, tmp_path):
        (tmp_path / "readme.txt").write_text("x")
        with pytest.raises(ValueError, match="contains no images"):
            ImageFolder(tmp_path, 16)

    def test_unknown_dataset_name(self):
        with pytest.raises(ValueError, match="unknown data.name='imagenet'"):
            build_dataset({"name": "imagenet", "image_size": 16})


class TestSamples:
    def test_deterministic_and_split(self):
        assert np.array_equal(np.asarray(generate_scene(3, 64)), np.asarray(generate_scene(3, 64)))
        train, val = SampleImages(2, 32, train=True), SampleImages(2, 32, train=False)
        assert not torch.equal(train[0]["image"], val[0]["image"])
        assert val[1]["image"].shape == (3, 32, 32)

    def test_scenes_have_structure(self):
        image = np.asarray(generate_scene(0, 128)).astype(float)
        assert image.std() > 10  # not a flat canvas


class TestResumableSampler:
    def test_resume_continues_the_same_sequence(self):
        full = ResumableSampler(10, 3, seed=1)
        stream = iter(full)
        sequence = [next(stream) for _ in range(3 * 7)]
        resumed = iter(ResumableSampler(10, 3, seed=1, start_step=4))
        assert [next(resumed) for _ in range(3 * 3)] == sequence[12:]

    def test_ranks_split_each_global_batch(self):
        single = ResumableSampler(12, 4, seed=0)
        ranks = [ResumableSampler(12, 2, seed=0, rank=r, world_size=2) for r in range(2)]
        for step in range(5):  # crosses an epoch boundary (3 steps per epoch)
            union = ranks[0].batch_indices(step) + ranks[1].batch_indices(step)
            assert union == single.batch_indices(step)

    def test_epochs_are_permutations(self):
        sampler = ResumableSampler(8, 2, seed=3)
        epoch = [i for step in range(4) for i, _ in sampler.batch_indices(step)]
        assert sorted(epoch) == list(range(8))
        assert epoch != [i for step in range(4, 8) for i, _ in sampler.batch_indices(step)]

    def test_dataset_smaller_than_a_batch(self):
        with pytest.raises(ValueError, match="fewer than one global batch of 8 .*data.batch_size=4 x 2 processes"):
            ResumableSampler(5, 4, world_size=2)


class TestColorJitter:
    def test_zero_strength_is_identity(self):
        image = torch.rand(3, 3, 8, 8)
        out = ColorJitter(0, 0, 0, 0, p=1.0)(image)
        torch.testing.assert_close(out, image)

    def test_per_sample_factors_and_range(self):
        torch.manual_seed(0)
        image = torch.rand(1, 3, 8, 8).expand(4, -1, -1, -1).contiguous()
        out = ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0)(image)
        assert out.min() >= 0 and out.max() <= 1
        assert not torch.allclose(out[0], out[1])

    def test_brightness_alone_scales(self):
        torch.manual_seed(0)
        image = torch.full((2, 3, 4, 4), 0.5)
        out = ColorJitter(0.4, 0, 0, 0, p=1.0)(image)
        ratio = out / image
        assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio))  # one factor per image
        assert ((ratio >= 0.6) & (ratio <= 1.4)).all()

    def test_bad_strength(self):
        with pytest.raises(ValueError, match="jitter.hue"):
            ColorJitter(hue=0.7)
