"""Each offline expert on images with known content."""

from __future__ import annotations

import numpy as np
import pytest

from tests.experts.conftest import face_image, rect_image, text_image
from vlm.experts import Batch, ExpertError, ExpertsConfig, build
from vlm.experts.base import check_label


def run_one(name: str, image: np.ndarray, cfg: ExpertsConfig | None = None, deps=None):
    exp = build(name, cfg or ExpertsConfig())
    exp.setup()
    batch = Batch(["k"], [image], {k: [v] for k, v in (deps or {}).items()})
    (label,) = exp.predict(batch)
    return check_label(exp, image, label)


def test_edges_follow_a_drawn_rectangle():
    x0, y0, x1, y1 = 60, 50, 160, 130
    label = run_one("edges", rect_image((x0, y0, x1, y1)))
    e = label.map > 0
    assert set(np.unique(label.map)) <= {0, 255}
    border = np.zeros_like(e)
    border[y0 - 2 : y1 + 3, x0 - 2 : x1 + 3] = True
    border[y0 + 3 : y1 - 2, x0 + 3 : x1 - 2] = False
    assert e.sum() >= 0.9 * 2 * ((x1 - x0) + (y1 - y0))  # the whole outline, not a few pixels
    assert e[~border].sum() == 0  # nothing inside or outside the border band
    # every side of the rectangle has edges along most of its length
    for side in (e[y0 - 2 : y0 + 3, x0:x1], e[y1 - 2 : y1 + 3, x0:x1]):
        assert side.any(axis=0).mean() > 0.9
    for side in (e[y0:y1, x0 - 2 : x0 + 3], e[y0:y1, x1 - 2 : x1 + 3]):
        assert side.any(axis=1).mean() > 0.9


def test_edges_threshold_validation():
    with pytest.raises(ValueError, match="must not exceed"):
        ExpertsConfig(edges={"low": 300, "high": 100})


def test_ocr_reads_rendered_text_and_masks_it():
    img = text_image("HELLO")
    label = run_one("ocr", img)
    words = label.meta["words"]
    assert any("HELLO" in w["text"].upper().replace(" ", "") for w in words), words
    mask = label.map > 0
    ink = img.min(axis=2) < 128
    assert mask[ink].mean() > 0.9  # the text pixels are inside the text mask
    assert mask.mean() < 0.4  # and the mask is not the whole image
    x0, y0, x1, y1 = words[0]["box"]
    ys, xs = np.nonzero(ink)
    assert x0 <= xs.min() + 3 and x1 >= xs.max() - 3 and y0 <= ys.min() + 3 and y1 >= ys.max() - 3


def test_ocr_finds_nothing_on_a_blank_image():
    label = run_one("ocr", np.full((64, 96, 3), 255, np.uint8))
    assert label.meta["words"] == [] and label.map.max() == 0


def test_tesseract_backend_is_explicit_about_the_binary():
    import shutil

    cfg = ExpertsConfig(backends={"ocr": "tesseract"})
    if shutil.which("tesseract") is None:
        with pytest.raises(ExpertError, match="apt-get install tesseract-ocr"):
            build("ocr", cfg).setup()
    else:
        label = run_one("ocr", text_image("HELLO"), cfg)
        assert any("HELLO" in w["text"].upper() for w in label.meta["words"])


def test_superpixels_are_an_instance_map_that_respects_a_colour_boundary():
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :80] = (200, 30, 30)
    img[:, 80:] = (30, 30, 200)
    label = run_one("segmentation", img, ExpertsConfig(superpixels={"segments": 16}))
    ids = np.unique(label.map)
    assert ids.min() >= 1 and 4 <= len(ids) <= 32
    assert sorted(int(i) for i in label.meta["instances"]) == ids.tolist()
    for i in ids:  # no superpixel straddles the red/blue boundary
        cols = np.nonzero(label.map == i)[1]
        assert cols.max() < 80 or cols.min() >= 80


def test_detection_finds_the_astronaut_face():
    label = run_one("detection", face_image(224))
    faces = [v for v in label.meta["instances"].values() if v["class"] == "face"]
    # the face is at about x 77-118, y 29-70 in the 224 px astronaut
    hits = [f for f in faces if f["box"][0] < 100 < f["box"][2] and f["box"][1] < 50 < f["box"][3]]
    assert hits, label.meta
    x0, y0, x1, y1 = hits[0]["box"]
    inst = int(next(k for k, v in label.meta["instances"].items() if v is hits[0]))
    assert (label.map[y0:y1, x0:x1] == inst).mean() > 0.5
    assert label.map[200:, :].max() == 0  # nothing detected in the lower part of the photo (the suit)
    assert label.meta["ordered_by"] == "area"


def test_detection_paints_far_to_near_by_depth():
    img = face_image(224)
    h, w = img.shape[:2]
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)
    near_right = run_one("detection", img, deps={"depth": ramp}).meta
    near_left = run_one("detection", img, deps={"depth": ramp[:, ::-1].copy()}).meta
    assert near_right["ordered_by"] == "depth"
    inst = near_right["instances"]
    assert len(inst) >= 2, "the test needs at least two detections"
    depths = [inst[str(i)]["depth"] for i in range(1, len(inst) + 1)]
    assert depths == sorted(depths)  # id 1 = farthest, painted first; the nearest is painted last, on top
    # reversing depth reverses the painting order of the boxes
    order_r = [tuple(inst[str(i)]["box"]) for i in range(1, len(inst) + 1)]
    order_l = [tuple(near_left["instances"][str(i)]["box"]) for i in range(1, len(inst) + 1)]
    assert order_l == order_r[::-1]


def test_detection_bad_cascade_is_a_clear_error():
    cfg = ExpertsConfig(detection={"classes": {"dog": "no_such_cascade.xml"}})
    with pytest.raises(ExpertError, match="cannot load cascade"):
        build("detection", cfg).setup()


def test_normals_from_depth():
    from vlm.experts.zoo.normals import normals_from_depth

    flat = normals_from_depth(np.full((32, 48), 100, np.uint8))
    assert flat.shape == (32, 48, 3)
    assert np.abs(flat[..., :2].astype(int) - 128).max() <= 1 and flat[..., 2].min() >= 254
    ramp = np.tile(np.linspace(0, 255, 48), (32, 1)).astype(np.uint8)  # nearer to the right
    n = normals_from_depth(ramp).astype(float) / 127.5 - 1
    mid = n[16, 24]
    assert mid[0] < -0.3 and abs(mid[1]) < 0.05 and mid[2] > 0.3  # surface faces left, towards the camera
    assert np.allclose(np.linalg.norm(n[8:24, 8:40], axis=-1), 1, atol=0.02)
