"""The embedded demo faces: deterministic, class-proportioned, expression carried by geometry."""

from __future__ import annotations

import numpy as np
import pytest

from emorec.demo_faces import (
    PROTOTYPES,
    class_counts,
    expression,
    generate_dataset,
    render_face,
)
from emorec.faces import detect_faces

PROPORTIONS = {"angry": 0.1163, "fearful": 0.1049, "happy": 0.3056, "neutral": 0.1890,
               "sad": 0.1715, "surprised": 0.1128}


def test_render_face_is_deterministic_uint8_of_requested_size():
    a = render_face("happy", np.random.default_rng(3), size=48, noise_std=10.0, ambiguity=0.3)
    b = render_face("happy", np.random.default_rng(3), size=48, noise_std=10.0, ambiguity=0.3)
    c = render_face("happy", np.random.default_rng(4), size=48, noise_std=10.0, ambiguity=0.3)
    assert a.dtype == np.uint8 and a.shape == (48, 48)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.std() > 20  # a face on a background, not a flat image


def test_expression_changes_only_the_face_not_identity_pose_or_background():
    """Same generator state, another label: only the inner face differs (geometry is the label)."""
    size = 64
    faces = {c: render_face(c, np.random.default_rng(11), size, 0.0, 0.0) for c in PROTOTYPES}
    ring = np.ones((size, size), dtype=bool)
    ring[6:-6, 6:-6] = False  # image border: background, hair, shoulders
    for label in PROTOTYPES:
        if label == "neutral":
            continue
        diff = np.abs(faces[label].astype(int) - faces["neutral"].astype(int))
        assert diff[ring].max() == 0, label
        assert (diff > 40).sum() > 15, f"{label} looks like neutral"


def test_ambiguity_blends_towards_other_classes():
    rng = np.random.default_rng(0)
    pure = [expression("surprised", rng, 0.0)["mouth_open"] for _ in range(200)]
    blended = [expression("surprised", rng, 1.0)["mouth_open"] for _ in range(200)]
    assert abs(np.mean(pure) - PROTOTYPES["surprised"]["mouth_open"]) < 0.05
    assert np.mean(blended) < np.mean(pure) - 0.2  # other classes open the mouth less


def test_unknown_label_is_refused():
    with pytest.raises(ValueError, match="unknown demo class"):
        render_face("disgust", np.random.default_rng(0), 32, 0.0, 0.0)


def test_dataset_follows_class_proportions_and_is_reproducible():
    counts = class_counts(3000, PROPORTIONS)
    assert sum(counts.values()) == 3000
    for name, share in PROPORTIONS.items():
        assert abs(counts[name] - 3000 * share) <= 1
    first = list(generate_dataset(60, PROPORTIONS, seed=5, size=32))
    again = list(generate_dataset(60, PROPORTIONS, seed=5, size=32))
    assert [i for i, _, _ in first] == [i for i, _, _ in again]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(first, again, strict=True))
    labels = [label for _, label, _ in first]
    assert {name: labels.count(name) for name in PROPORTIONS} == class_counts(60, PROPORTIONS)
    assert len({i for i, _, _ in first}) == 60


def test_haar_cascade_finds_one_face_in_most_demo_faces():
    """Realistic enough for the face detector the synth filter and the service use."""
    found = 0
    n = 36
    for i in range(n):
        label = list(PROTOTYPES)[i % 6]
        face = render_face(label, np.random.default_rng([i, 99]), 64, 14.0, 0.3)
        found += len(detect_faces(face)) == 1
    assert found / n >= 0.8
