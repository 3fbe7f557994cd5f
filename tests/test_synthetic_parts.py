"""The part boxes of the built-in dataset: recording them leaves the image unchanged, each box
contains its part's pixels (the rasterized mask of the part's polygons) and is tight, left and
right are as seen in the image, and ``part_boxes`` collects them per class."""
import numpy as np
import pytest

from zfraw import synthetic as S


@pytest.fixture(scope="module")
def drawn():
    """(image, label, parts) for 40 validation images (4 of each class)."""
    ds = S.SyntheticDataset(4, seed=0, size=64, split="val")
    return ds, [ds.parts(i) for i in range(len(ds))]


def test_recording_parts_keeps_the_image_bit_identical(drawn):
    ds, items = drawn
    for i, (image, label, _) in enumerate(items):
        assert np.array_equal(image, ds[i][0]) and label == ds[i][1]
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    plain = S.render("face", rng_a, size=48)
    with_parts, _ = S.render("face", rng_b, size=48, return_parts=True)
    assert np.array_equal(plain, with_parts)
    assert rng_a.random() == rng_b.random()  # the same numbers were drawn


def test_every_class_reports_its_parts(drawn):
    _, items = drawn
    for _, label, parts in items:
        assert list(parts) == list(S.PARTS[S.CLASSES[label]])
        for part in parts.values():
            assert isinstance(part, S.Part) and part.mask.shape == (64, 64) and part.mask.dtype == bool


def test_boxes_contain_the_part_pixels_and_are_tight(drawn):
    _, items = drawn
    checked = 0
    for _, label, parts in items:
        for name, part in parts.items():
            if part.box is None:
                assert not part.mask.any()
                continue
            top, left, bottom, right = part.box
            assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64
            rows, cols = np.nonzero(part.mask)
            assert len(rows), (S.CLASSES[label], name)
            inside = np.zeros_like(part.mask)
            inside[top:bottom, left:right] = True
            assert not (part.mask & ~inside).any(), (S.CLASSES[label], name, part.box)
            # tight: one pixel of slack at most on each side not cut by the image border
            if top > 0 and bottom < 64 and left > 0 and right < 64:
                assert rows.min() - top <= 1 and bottom - 1 - rows.max() <= 1
                assert cols.min() - left <= 1 and right - 1 - cols.max() <= 1
            checked += 1
    assert checked >= 40


def _interior(mask):
    """The pixels of ``mask`` whose 4 neighbours are in it too (wholly covered by the part)."""
    m = np.pad(mask, 1)
    return mask & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def test_part_pixels_are_drawn_in_the_image(drawn):
    """Where a face's eye or mouth mask is full, the image has the feature colour, which
    contrasts with the face: those pixels differ from the face disc around them."""
    _, items = drawn
    faces = [(image, parts) for image, label, parts in items if S.CLASSES[label] == "face"]
    checked = 0
    for image, parts in faces:
        eye = _interior(parts["left_eye"].mask)
        if eye.sum() < 2:
            continue
        disc_ring = np.zeros_like(eye)
        t, l, b, r = parts["left_eye"].box
        disc_ring[max(t - 2, 0):b + 2, max(l - 2, 0):r + 2] = True
        disc_ring &= ~(parts["left_eye"].mask | parts["right_eye"].mask | parts["mouth"].mask)
        inner = image[eye].astype(float).mean(axis=0)
        around = image[disc_ring].astype(float).mean(axis=0)
        assert np.linalg.norm(inner - around) > 25
        checked += 1
    assert checked >= 2


def test_left_and_right_follow_the_image(drawn):
    _, items = drawn
    for _, label, parts in items:
        for pair in (("left_eye", "right_eye"), ("left_wheel", "right_wheel")):
            if pair[0] in parts:
                left, right = (np.nonzero(parts[p].mask)[1].mean() for p in pair)
                assert left < right


def test_part_boxes_collects_images_of_one_class():
    ds = S.SyntheticDataset(3, seed=0, size=64, split="val")
    idx, images, boxes = ds.part_boxes("house", "door", 2)
    assert idx.tolist() == [int(i) for i in np.flatnonzero(ds.labels == 3)[:2]]
    assert images.shape == (2, 64, 64, 3) and boxes.shape == (2, 4) and boxes.dtype == np.int64
    for i, image, box in zip(idx, images, boxes):
        same_image, _, parts = ds.parts(int(i))
        assert np.array_equal(image, same_image) and tuple(box) == parts["door"].box
    idx, _, _ = ds.part_boxes("house", "door", 10)
    assert len(idx) <= 3  # only 3 houses in the dataset
    with pytest.raises(ValueError, match="part"):
        ds.part_boxes("star", "door", 2)
    with pytest.raises(ValueError, match="label"):
        ds.part_boxes("dog", "door", 2)
    with pytest.raises(ValueError, match="n"):
        ds.part_boxes("house", "door", 0)
