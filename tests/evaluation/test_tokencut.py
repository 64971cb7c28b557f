"""TokenCut's pieces against independent oracles: the graph against a hand-built matrix, both eigen-solvers against
each other and against numpy's eigh of the symmetric normalised Laplacian, the cut of a known block, the metrics on
hand-computed boxes and masks, and the dataset readers on fake VOC / COCO20k / ECSSD layouts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.tokencut import datasets, metrics, ncut

# ---------------------------------------------------------------------------------------------------------------
# normalised cut


def block_features(height: int = 8, width: int = 10, block=(slice(2, 6), slice(3, 8)), channels: int = 16):
    """(C, h, w): one random vector inside ``block``, another everywhere else."""
    gen = torch.Generator().manual_seed(0)
    inside, outside = torch.randn(channels, generator=gen), torch.randn(channels, generator=gen)
    features = outside[:, None, None].repeat(1, height, width)
    features[:, block[0], block[1]] = inside[:, None, None]
    mask = np.zeros((height, width), dtype=bool)
    mask[block] = True
    return features, mask


@pytest.mark.parametrize("solver", ncut.SOLVERS)
def test_a_block_of_identical_tokens_is_found_exactly(solver):
    features, block = block_features()
    cut = ncut.normalized_cut(features, tau=0.2, solver=solver)
    assert np.array_equal(cut.component, block) and np.array_equal(cut.foreground, block)
    assert cut.box == (3, 2, 8, 6) and block[cut.seed]
    assert ncut.pixel_box(cut.box, (16, 16), 100, 1000) == (48, 32, 128, 96)


def numpy_graph(features: np.ndarray, tau: float, eps: float, binary: bool) -> np.ndarray:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    s = unit @ unit.T
    return np.where(s > tau, 1.0, eps) if binary else np.where(s >= tau, s, eps)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("sparse", [True, False])
def test_graph_and_its_matvec_match_a_hand_built_matrix(binary, sparse, monkeypatch):
    monkeypatch.setattr(ncut, "ROW_BLOCK", 7)  # several blocks, the last one partial
    monkeypatch.setattr(ncut, "SPARSE_DENSITY", 2.0 if sparse else -1.0)
    features = torch.randn(30, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    graph = ncut.build_graph(features, 0.2, 1e-5, binary)
    expected = numpy_graph(features.numpy(), 0.2, 1e-5, binary)
    np.testing.assert_allclose(graph.dense(), expected, rtol=1e-6, atol=1e-12)
    v = np.random.default_rng(0).standard_normal(30)
    np.testing.assert_allclose(graph.matvec(v), expected @ v, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(graph.degrees(), expected.sum(axis=1), rtol=1e-6)


def laplacian_eigenvector(a: np.ndarray) -> np.ndarray:
    """The oracle: numpy's eigh of I - D^-1/2 A D^-1/2; second-smallest eigenvector mapped back by D^-1/2."""
    inv_sqrt = 1 / np.sqrt(a.sum(axis=1))
    _, vectors = np.linalg.eigh(np.eye(len(a)) - inv_sqrt[:, None] * a * inv_sqrt[None])
    return inv_sqrt * vectors[:, 1]


def random_features(kind: str, seed: int, grid=(10, 12), channels: int = 24) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    if kind == "random":
        flat = torch.randn(n, channels, generator=gen)
    else:  # blocks of correlated vectors: 3 spatial regions, each its centre plus noise
        labels = torch.zeros(grid, dtype=torch.long)
        labels[:, grid[1] // 3 :] = 1
        labels[grid[0] // 4 : 3 * grid[0] // 4, grid[1] // 4 : grid[1] // 2] = 2
        flat = torch.randn(3, channels, generator=gen)[labels.flatten()] + 0.8 * torch.randn(n, channels, generator=gen)
    return flat.T.reshape(channels, *grid)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("binary", [True, False])
def test_both_solvers_and_the_laplacian_oracle_agree(kind, seed, binary):
    features = random_features(kind, seed)
    dense = ncut.normalized_cut(features, 0.2, solver="dense", binary_graph=binary)
    lanczos = ncut.normalized_cut(features, 0.2, solver="lanczos", binary_graph=binary)
    assert np.array_equal(dense.foreground, lanczos.foreground)
    assert dense.seed == lanczos.seed and dense.box == lanczos.box
    assert np.array_equal(dense.component, lanczos.component)
    a = numpy_graph(features.reshape(features.shape[0], -1).T.double().numpy(), 0.2, ncut.EPS, binary)
    oracle = laplacian_eigenvector(a)
    for vector in (dense.eigenvector.ravel(), lanczos.eigenvector.ravel()):
        cosine = abs(vector @ oracle) / np.linalg.norm(vector) / np.linalg.norm(oracle)
        assert cosine > 1 - 1e-8
    foreground, _ = ncut.bipartition(oracle)
    assert np.array_equal(foreground.reshape(dense.foreground.shape), dense.foreground)


def column_clusters(widths) -> torch.Tensor:
    """(3, 6, sum(widths)): mutually orthogonal features (one-hot channels) on consecutive bands of columns."""
    features = torch.zeros(len(widths), 6, sum(widths))
    start = 0
    for channel, width in enumerate(widths):
        features[channel, :, start : start + width] = 1.0
        start += width
    return features


def test_a_repeated_lambda2_falls_back_to_the_dense_solver(caplog):
    """Three orthogonal clusters of 4 columns joined only by eps: by symmetry lambda2 = lambda3 (numpy's eigh of
    the normalised Laplacian says so), so any vector of that eigenspace is a cut; the dense solver cuts out the
    middle band (4, 0, 8, 6), and Lanczos, which on its own returned another vector of the eigenspace (the right
    band), must give the same box."""
    features = column_clusters((4, 4, 4))
    a = numpy_graph(features.reshape(3, -1).T.double().numpy(), 0.2, ncut.EPS, True)
    inv_sqrt = 1 / np.sqrt(a.sum(axis=1))
    spectrum = np.linalg.eigvalsh(np.eye(len(a)) - inv_sqrt[:, None] * a * inv_sqrt[None])
    assert spectrum[2] - spectrum[1] < 1e-12 < spectrum[1]
    dense = ncut.normalized_cut(features, 0.2, solver="dense")
    assert dense.box == (4, 0, 8, 6)
    with caplog.at_level(logging.WARNING, logger="wrc"):
        lanczos = ncut.normalized_cut(features, 0.2, solver="lanczos")
    assert "is repeated" in caplog.text and "using the dense solver" in caplog.text
    assert lanczos.box == dense.box and np.array_equal(lanczos.component, dense.component)


@pytest.mark.parametrize("widths", [(4, 4, 5), (3, 4, 5)])
def test_distinct_but_close_eigenvalues_stay_with_lanczos(widths, caplog, monkeypatch):
    """Unequal bands split lambda2 from lambda3 (by ~4e-6 and ~1e-5 here): Lanczos keeps its own vector and cuts
    as the dense solver does. The cut separates the widest band from the other two: by hand, the normalised cut of
    a band of n of the N tokens is about eps ((N - n) / n + n / (N - n)), smallest for the largest n."""
    features = column_clusters(widths)
    dense = ncut.normalized_cut(features, 0.2, solver="dense")
    monkeypatch.setattr(ncut, "dense_eigenvector", lambda graph: pytest.fail("no fallback without a repeat"))
    with caplog.at_level(logging.WARNING, logger="wrc"):
        lanczos = ncut.normalized_cut(features, 0.2, solver="lanczos")
    assert caplog.text == "" and lanczos.box == dense.box
    assert np.array_equal(lanczos.component, dense.component)
    widest = np.zeros(sum(widths), dtype=bool)
    widest[sum(widths[:-1]):] = True  # the last band is the widest
    assert np.array_equal(lanczos.foreground, np.broadcast_to(widest, (6, sum(widths)))) or np.array_equal(
        lanczos.foreground, np.broadcast_to(~widest, (6, sum(widths))))


def test_bipartition_does_not_depend_on_the_sign_and_keeps_the_seed():
    x = np.random.default_rng(3).standard_normal(50)
    for vector in (x, -x):
        foreground, seed = ncut.bipartition(vector)
        assert seed == int(np.argmax(np.abs(x))) and foreground[seed]
    assert np.array_equal(ncut.bipartition(x)[0], ncut.bipartition(-x)[0])
    tied = np.array([0.5, -1.0, 1.0 - 1e-12, 0.2])  # equal up to rounding: the first one is the seed
    assert ncut.bipartition(tied)[1] == 1 and ncut.bipartition(-tied)[1] == 1


def test_the_component_is_4_connected_and_its_box_is_exclusive():
    foreground = np.array([[1, 1, 0, 0],
                           [0, 1, 0, 0],
                           [0, 0, 1, 1],  # touches the first group only diagonally
                           [0, 0, 0, 1]], dtype=bool)
    component = ncut.seed_component(foreground, (0, 0))
    assert component.sum() == 3 and not component[2, 2]
    assert ncut.grid_box(component) == (0, 0, 2, 2)
    assert ncut.grid_box(ncut.seed_component(foreground, (3, 3))) == (2, 2, 4, 4)
    assert ncut.pixel_box((2, 2, 4, 4), (8.0, 10.0), height=30, width=35) == (20.0, 16.0, 35.0, 30.0)  # clipped
    with pytest.raises(ValueError, match="not in the foreground"):
        ncut.seed_component(foreground, (3, 0))


def test_bad_solver_and_shapes_are_refused():
    features, _ = block_features()
    with pytest.raises(ValueError, match="solver='eig'; expected one of"):
        ncut.normalized_cut(features, 0.2, solver="eig")
    with pytest.raises(ValueError, match=r"features must be \(C, h, w\)"):
        ncut.normalized_cut(features[0], 0.2)


# ---------------------------------------------------------------------------------------------------------------
# metrics


def test_box_iou_and_corloc_on_hand_computed_boxes():
    ious = metrics.box_iou([0, 0, 10, 10], [[0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 5]])
    np.testing.assert_allclose(ious, [1.0, 25 / 175, 0.0, 0.5], atol=1e-6)
    assert metrics.is_correct([0, 0, 10, 10], [[20, 20, 30, 30], [1, 1, 10, 10]])  # any box counts: IoU 0.81
    assert not metrics.is_correct([0, 0, 10, 10], [[0, 0, 10, 4], [30, 30, 40, 40]])  # best IoU 0.4
    assert not metrics.is_correct([0, 0, 10, 10], np.zeros((0, 4)))  # no ground truth: a miss
    assert metrics.corloc([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="no images"):
        metrics.corloc([])


def square_mask(size=(10, 10), rows=slice(2, 6), cols=slice(2, 6)) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_mask_metrics_on_perfect_and_empty_predictions():
    gt = square_mask()
    stored = gt.astype(np.uint8) * 255  # as a ground-truth PNG stores it
    assert metrics.max_f([metrics.f_curve(gt.astype(float), stored)]) == pytest.approx(1.0)
    assert metrics.mask_iou(gt.astype(float), stored) == 1.0 and metrics.accuracy(gt.astype(float), stored) == 1.0
    empty = np.zeros(gt.shape)
    assert metrics.max_f([metrics.f_curve(empty, gt)]) == 0.0  # precision 1 (nothing predicted), recall 0
    assert metrics.mask_iou(empty, gt) == 0.0 and metrics.accuracy(empty, gt) == pytest.approx(1 - 16 / 100)


def test_f_curve_and_max_f_on_hand_computed_maps():
    gt = square_mask()  # 16 pixels
    soft = np.zeros(gt.shape)
    soft[2:6, 2:4] = 0.9  # 8 true positives that survive every threshold below 0.9
    soft[0, :] = 0.2  # 10 false positives below 0.2
    curve = metrics.f_curve(soft, gt)
    low = 1.3 * (8 / 18) * 0.5 / (0.3 * 8 / 18 + 0.5)  # t < 0.2: P = 8/18, R = 1/2
    high = 1.3 * 1.0 * 0.5 / (0.3 + 0.5)  # 0.2 <= t < 0.9: P = 1, R = 1/2
    np.testing.assert_allclose(curve[metrics.THRESHOLDS < 0.2], low)
    np.testing.assert_allclose(curve[(metrics.THRESHOLDS >= 0.2) & (metrics.THRESHOLDS < 0.9)], high)
    np.testing.assert_allclose(curve[metrics.THRESHOLDS >= 0.9], 0.0)
    # maxF averages over images per threshold first: best thresholds that differ per image do not add up
    other = np.where(gt, 0.1, 0.0)  # perfect below 0.1, nothing above
    mean = (curve + metrics.f_curve(other, gt)) / 2
    assert metrics.max_f([curve, metrics.f_curve(other, gt)]) == pytest.approx(mean.max())
    assert mean.max() == pytest.approx((low + 1) / 2)
    assert metrics.mask_iou(soft, gt) == pytest.approx(8 / 16) and metrics.accuracy(soft, gt) == 0.92


def test_ground_truths_use_the_stored_rule_and_predictions_must_be_in_the_unit_range():
    """A ground truth: any non-zero pixel (a 0/255 PNG, or a 0/1 map); a prediction: > 0.5, whatever its dtype, and
    a uint8 map on 0..255 is refused instead of being thresholded on the wrong scale."""
    values = np.array([[0, 1, 128, 255]], dtype=np.uint8)
    assert metrics.binarise(values, stored=True).tolist() == [[False, True, True, True]]
    assert metrics.binarise(np.array([[0.0, 0.3, 0.6]]), stored=True).tolist() == [[False, True, True]]
    assert metrics.binarise(np.array([[0.0, 0.3, 0.6]])).tolist() == [[False, False, True]]
    assert metrics.binarise(np.array([[0, 1]], dtype=np.uint8)).tolist() == [[False, True]]  # a 0/1 uint8 prediction
    for bad in (values, np.array([[0.2, 1.5]]), np.array([[np.nan, 0.0]])):
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            metrics.binarise(bad)
        with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
            metrics.f_curve(bad, np.ones(bad.shape, dtype=bool))
    gt = np.array([[0, 255, 255, 0]], dtype=np.uint8)  # as stored
    prediction = np.array([[0.0, 0.4, 0.9, 0.6]])  # > 0.5: pixels 2 and 3
    assert metrics.mask_iou(prediction, gt) == pytest.approx(1 / 3) and metrics.accuracy(prediction, gt) == 0.5


# ---------------------------------------------------------------------------------------------------------------
# datasets


VOC_XML = """<annotation><filename>000001.jpg</filename><size><width>64</width><height>48</height><depth>3</depth>
</size><object><name>dog</name><truncated>1</truncated><difficult>0</difficult><bndbox><xmin>9</xmin><ymin>9</ymin>
<xmax>40</xmax><ymax>32</ymax></bndbox></object><object><name>cat</name><difficult>{difficult}</difficult><bndbox>
<xmin>1</xmin><ymin>1</ymin><xmax>8</xmax><ymax>6</ymax></bndbox></object></annotation>"""


def save_image(path, height=48, width=64, box=(8, 8, 40, 32)) -> None:
    """A dark image with a bright rectangle (x1, y1, x2, y2, exclusive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    pixels[box[1] : box[3], box[0] : box[2]] = 230
    Image.fromarray(pixels).save(path)


def fake_voc(root, year="2007", ids=("000001",), difficult=0):
    """D.4's fake VOC: VOC<year>/VOCdevkit/VOC<year>/{JPEGImages, Annotations, ImageSets/Main/trainval.txt}."""
    base = root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}"
    for name in ids:
        save_image(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(difficult=difficult))
    (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def fake_coco(root, ids=(9,), crowd=True):
    """D.4's fake COCO20k (+ an iscrowd box to drop): coco_20k_filenames.txt, COCO/{images/train2014, annotations}."""
    images, annotations = [], []
    for image_id in ids:
        name = f"COCO_train2014_{image_id:012d}.jpg"
        save_image(root / "COCO" / "images" / "train2014" / name)
        images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        annotations.append({"id": 10 * image_id + 1, "image_id": image_id, "category_id": 1, "bbox": [8, 8, 24, 16],
                            "area": 384, "iscrowd": 0, "segmentation": [[8, 8, 32, 8, 32, 24, 8, 24]]})
        if crowd:
            annotations.append({"id": 10 * image_id + 2, "image_id": image_id, "category_id": 1,
                                "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1, "segmentation": {}})
    extra = {"id": 99, "file_name": "COCO_train2014_000000000099.jpg", "width": 64, "height": 48}  # not listed
    (root / "COCO" / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "COCO" / "annotations" / "instances_train2014.json").write_text(json.dumps(
        {"info": {}, "images": images + [extra], "annotations": annotations,
         "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}))
    (root / "coco_20k_filenames.txt").write_text(
        "\n".join(f"train2014/COCO_train2014_{i:012d}.jpg" for i in ids) + "\n")
    return root


@pytest.mark.parametrize("name, year", [("voc07", "2007"), ("voc12", "2012")])
def test_voc_boxes_are_made_0_based_and_every_object_is_kept(tmp_path, name, year):
    listing = datasets.voc(fake_voc(tmp_path, year), name, "trainval")
    assert len(listing) == 1 and listing.name == name and listing.split == "trainval"
    item = listing.items[0]
    np.testing.assert_array_equal(item.boxes, [[8, 8, 40, 32], [0, 0, 8, 6]])  # xmin, ymin - 1
    assert item.classes == ["dog", "cat"] and item.image.is_file()
    assert datasets.voc(tmp_path / f"VOC{year}", name).items[0].name == "000001"  # VOC<year>/ as the root works too


def test_voc_hard_flags_are_per_object_and_without_hard_drops_those_objects(tmp_path):
    """The fake XML: the dog is truncated (hard), the cat is neither truncated nor difficult (easy), unless
    difficult=1 makes it hard too."""
    item = datasets.voc(fake_voc(tmp_path / "a"), "voc07").items[0]
    assert item.hard.tolist() == [True, False]
    easy = item.without_hard()
    np.testing.assert_array_equal(easy.boxes, [[0, 0, 8, 6]])  # only the cat's box is left
    assert easy.classes == ["cat"] and easy.hard.tolist() == [False] and easy.name == item.name
    both_hard = datasets.voc(fake_voc(tmp_path / "b", difficult=1), "voc07").items[0]
    assert both_hard.hard.tolist() == [True, True] and both_hard.without_hard().boxes.shape == (0, 4)


def test_voc_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="protocol.root is not set"):
        datasets.voc(None, "voc07")
    with pytest.raises(FileNotFoundError, match="protocol.root: .*nowhere not found; expected the layout VOC2007"):
        datasets.voc(tmp_path / "nowhere", "voc07")
    fake_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"protocol.split='test': .*ImageSets/Main/test.txt not found"):
        datasets.voc(tmp_path, "voc07", "test")
    listing = tmp_path / "VOC2007" / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    listing.write_text("000001\n000002\n")
    with pytest.raises(FileNotFoundError, match=r"2 of the 4 files listed in .*trainval.txt are missing, e.g. "
                                                r".*JPEGImages/000002.jpg"):
        datasets.voc(tmp_path, "voc07")
    with pytest.raises(FileNotFoundError, match="VOC2012/VOCdevkit/VOC2012/ImageSets/Main not found"):
        datasets.voc(tmp_path, "voc12")


def test_coco20k_drops_crowds_and_writes_the_derived_file_once(tmp_path, monkeypatch):
    root = fake_coco(tmp_path)
    listing = datasets.coco20k(root)
    item = listing.items[0]
    np.testing.assert_array_equal(item.boxes, [[8, 8, 32, 24]])  # xywh -> xyxy, the crowd box dropped
    assert item.name == "COCO_train2014_000000000009" and item.classes == ["person"]
    derived = root / "COCO" / "annotations" / "instances_train2014_sel20k.json"
    selection = json.loads(derived.read_text())
    assert [i["id"] for i in selection["images"]] == [9] and len(selection["annotations"]) == 2
    stamp = derived.stat().st_mtime_ns
    monkeypatch.setattr(datasets, "select_images", lambda *a: pytest.fail("the derived file must be reused"))
    again = datasets.coco20k(root)
    assert derived.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.items[0].boxes, item.boxes)


def test_coco20k_derived_file_goes_to_the_cache_when_the_annotations_are_read_only(tmp_path, monkeypatch):
    root = fake_coco(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "writable", lambda folder: False)
    datasets.coco20k(root)
    annotations = root / "COCO" / "annotations" / "instances_train2014.json"
    cached = datasets.cache_folder(annotations) / "instances_train2014_sel20k.json"
    assert cached.is_file() and str(cached).startswith(str(tmp_path / "cache" / "wrc" / "coco20k"))
    assert not (annotations.parent / "instances_train2014_sel20k.json").exists()
    monkeypatch.setattr(datasets, "select_images", lambda *a: pytest.fail("the cached file must be reused"))
    assert len(datasets.coco20k(root)) == 1


def test_coco20k_boxes_are_rounded_after_the_xyxy_conversion(tmp_path):
    """bbox [8.4, 8.6, 23.5, 15.5] -> xyxy [8.4, 8.6, 31.9, 24.1] -> [8, 9, 32, 24] (rounding x, y, w, h first would
    give y2 = 9 + 16 = 25); [2.5, 3.5, 10, 10] -> [2.5, 3.5, 12.5, 13.5] -> halves to even [2, 4, 12, 14]."""
    root = fake_coco(tmp_path, crowd=False)
    annotations = root / "COCO" / "annotations" / "instances_train2014.json"
    full = json.loads(annotations.read_text())
    full["annotations"][0]["bbox"] = [8.4, 8.6, 23.5, 15.5]
    full["annotations"].append({**full["annotations"][0], "id": 2, "bbox": [2.5, 3.5, 10, 10]})
    annotations.write_text(json.dumps(full))
    item = datasets.coco20k(root).items[0]
    np.testing.assert_array_equal(item.boxes, [[8, 9, 32, 24], [2, 4, 12, 14]])
    assert item.hard.tolist() == [False, False]


def test_coco20k_errors(tmp_path):
    root = fake_coco(tmp_path / "a")
    annotations = root / "COCO" / "annotations" / "instances_train2014.json"
    full = json.loads(annotations.read_text())
    full["annotations"] = []
    annotations.write_text(json.dumps(full))
    with pytest.raises(ValueError, match="COCO20k image COCO_train2014_000000000009.jpg has no annotations"):
        datasets.coco20k(root)
    root = fake_coco(tmp_path / "b", ids=(9, 12))
    (root / "COCO" / "images" / "train2014" / "COCO_train2014_000000000012.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 2 files listed in .*coco_20k_filenames.txt are missing, "
                                                "e.g. .*COCO_train2014_000000000012.jpg"):
        datasets.coco20k(root)
    (root / "coco_20k_filenames.txt").write_text("train2014/COCO_train2014_000000000009.jpg\n")
    with pytest.raises(ValueError, match="holds other images than .*coco_20k_filenames.txt"):
        datasets.coco20k(root)  # the derived file of the longer list is stale
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="coco_20k_filenames.txt not found; expected the layout"):
        datasets.coco20k(tmp_path / "c")


def fake_ecssd(root, names=("0001",), height=48, width=64):
    """G's fake ECSSD: ECSSD/img/<name>.jpg and ECSSD/gt/<name>.png (L, 0/255 rectangle)."""
    for name in names:
        save_image(root / "ECSSD" / "img" / f"{name}.jpg", height, width)
        (root / "ECSSD" / "gt").mkdir(parents=True, exist_ok=True)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[8:32, 8:40] = 255
        Image.fromarray(mask, mode="L").save(root / "ECSSD" / "gt" / f"{name}.png")
    return root


def test_salient_reader_and_its_errors(tmp_path):
    listing = datasets.salient(fake_ecssd(tmp_path, ("0002", "0001")), "ecssd")
    assert [item.name for item in listing.items] == ["0001", "0002"]
    mask = datasets.read_mask(listing.items[0].mask)
    assert mask.dtype == bool and mask.sum() == 24 * 32 and mask[8, 8] and not mask[7, 8]
    assert len(datasets.salient(tmp_path / "ECSSD", "ecssd")) == 2  # the dataset folder itself as the root
    (tmp_path / "ECSSD" / "gt" / "0002.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 of the 2 files for the images of .*img are missing, e.g. "
                                                ".*gt/0002.png"):
        datasets.salient(tmp_path, "ecssd")
    with pytest.raises(FileNotFoundError, match="DUTS_Test/img not found; expected the layout DUTS_Test/img"):
        datasets.salient(tmp_path, "duts_te")
