"""Captioned shapes: the grammar, the renderer, the seeded splits and the pixel oracle."""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from diffusion_lm.errors import UserError
from diffusion_lm.image import data, oracle
from diffusion_lm.image.shapes import (BACKGROUND, COLOURS, MAX_WORDS, PALETTE, POSITIONS, RELATIONS,
                                       SHAPES, SIZES, VOCAB, Obj, Scene, caption, complete, mask,
                                       parse_caption, random_scene, render, strip_positions)


@pytest.fixture(scope="module")
def test_split():
    return data.make_batch("test", 500, seed=0, return_scenes=True)


def _canvas() -> np.ndarray:
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = BACKGROUND
    return img


def _stamp(img, shape, size, colour, x, y):
    m = mask(shape, size)
    img[y:y + m.shape[0], x:x + m.shape[1]][m] = PALETTE[colour]


# -- every attribute on hand-built scenes -------------------------------------------------------

def test_every_single_object_scene_reads_back_exactly():
    scenes = [Scene((Obj(s, c, z, p),)) for s, c, z, p in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)]
    images = np.stack([render(s, seed) for seed, s in enumerate(scenes)])
    assert images.shape == (len(scenes), 32, 32, 3) and images.dtype == np.uint8
    assert oracle.read_scenes(images) == scenes
    hits = oracle.match_all(images, [caption(s) for s in scenes])
    assert all(h["caption"] and h["shape"] and h["colour"] and h["size"] and h["position"] for h in hits)
    assert all(h["relation"] is None for h in hits)


@pytest.mark.parametrize("attribute,values", [("shape", SHAPES), ("colour", COLOURS), ("size", SIZES),
                                              ("position", POSITIONS)])
def test_a_wrong_attribute_misses_only_that_attribute(attribute, values):
    base = Obj("circle", "red", "large", "centre")
    for value in values:
        img = render(Scene((replace(base, **{attribute: value}),)), 3)
        for other in values:
            h = oracle.matches(img, caption(Scene((replace(base, **{attribute: other}),))))
            assert h[attribute] == (other == value)
            assert h["caption"] == (other == value)
            assert all(h[a] for a in ("shape", "colour", "size", "position") if a != attribute)


@pytest.mark.parametrize("relation", RELATIONS)
def test_both_directions_of_every_relation(relation):
    converse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    for seed in range(20):
        scene = Scene((Obj("square", "blue"), Obj("triangle", "yellow")), relation)
        img = render(scene, seed)
        h = oracle.matches(img, caption(scene))
        assert h["relation"] and h["caption"], (seed, h)
        # the converse, and the same relation with the objects swapped, are false
        assert not oracle.matches(img, caption(Scene(scene.objects, converse)))["relation"]
        assert not oracle.matches(img, caption(Scene(scene.objects[::-1], relation)))["caption"]
        # and the same picture holds for the swapped objects under the converse
        assert oracle.matches(img, caption(Scene(scene.objects[::-1], converse)))["caption"]


def test_relation_is_read_from_hand_placed_objects():
    img = _canvas()
    _stamp(img, "circle", "small", "red", 2, 12)  # left
    _stamp(img, "square", "small", "blue", 20, 14)  # right, a little lower
    assert oracle.matches(img, "a red circle left of a blue square")["caption"]
    assert oracle.matches(img, "a blue square right of a red circle")["caption"]
    assert not oracle.matches(img, "a red circle above a blue square")["relation"]
    img = _canvas()
    _stamp(img, "diamond", "large", "green", 10, 1)  # top
    _stamp(img, "diamond", "small", "green", 13, 20)  # bottom, same colour
    assert oracle.matches(img, "a large green diamond above a small green diamond")["caption"]
    assert oracle.matches(img, "a small green diamond below a large green diamond")["caption"]
    assert not oracle.matches(img, "a small green diamond above a large green diamond")["caption"]


def test_two_object_captions_with_free_sizes(test_split):
    images, captions, scenes = test_split
    two = [i for i, s in enumerate(scenes) if len(s.objects) == 2]
    assert any(len(parse_caption(captions[i]).objects) == 2 and
               None in [o.size for o in parse_caption(captions[i]).objects] for i in two)
    for i in two[:50]:
        free = Scene(tuple(Obj(o.shape, o.colour) for o in scenes[i].objects), scenes[i].relation)
        h = oracle.matches(images[i], caption(free))
        assert h["caption"] and h["size"] is None and h["position"] is None


# -- what the oracle refuses -------------------------------------------------------------------

def test_overlapping_or_touching_objects_fail_cleanly():
    img = _canvas()
    _stamp(img, "square", "large", "red", 8, 8)
    _stamp(img, "circle", "large", "blue", 12, 10)  # overlaps the square
    assert oracle.read_scene(img) is None
    h = oracle.matches(img, "a red square left of a blue circle")
    assert not h["caption"] and not h["count"] and not h["shape"]
    img = _canvas()
    _stamp(img, "square", "small", "red", 8, 8)
    _stamp(img, "square", "small", "green", 15, 8)  # touches edge to edge
    assert oracle.read_scene(img) is None
    img = _canvas()
    _stamp(img, "circle", "large", "red", 6, 6)
    _stamp(img, "circle", "large", "red", 12, 9)  # same colour: one merged blob, not two circles
    h = oracle.matches(img, "a red circle left of a red circle")
    assert not h["caption"] and not h["count"]


def test_unreadable_pictures_never_raise():
    rng = np.random.default_rng(0)
    blank = _canvas()
    assert oracle.read_scene(blank) is None
    assert not oracle.matches(blank, "a red circle")["caption"]
    noise = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for img in noise:
        h = oracle.matches(img, "a small red circle at the top left")
        assert set(h) == {"shape", "colour", "size", "position", "relation", "count", "caption"}
    three = _canvas()
    for k, x in enumerate((1, 12, 23)):
        _stamp(three, "square", "small", COLOURS[k], x, 12)
    assert oracle.read_scene(three) is None
    floats = render(parse_caption("a large cyan triangle at the centre"), 0) / 255.0  # [0, 1] floats work too
    assert oracle.matches(floats, "a large cyan triangle at the centre")["caption"]


# -- the caption grammar -----------------------------------------------------------------------

@pytest.mark.parametrize("text,needle", [
    ("a huge red circle", "'huge'"),
    ("a red circle next to a blue square", "'next'"),
    ("", "empty"),
    ("   ", "empty"),
    (" ".join(["a red circle"] * 7), "more than"),
    ("a red circle left of", "expected 'a'"),
    ("a small large red circle", "expected a shape"),
    ("a red circle left of a blue square above a green diamond", "3 objects"),
    ("a red circle at the right left of a blue square", "cannot draw"),  # nothing is right of the right
    ("a red circle at the top left above a blue square at the bottom right", "cannot draw"),
    ("a red circle at the centre left of a blue square at the centre", "cannot draw"),
])
def test_bad_captions_are_one_line_user_errors(text, needle):
    with pytest.raises(UserError) as e:
        parse_caption(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_caption_scene_round_trip():
    for seed in range(300):
        scene = random_scene(seed)
        assert parse_caption(caption(scene)) == strip_positions(scene)
        assert caption(parse_caption(caption(scene))) == caption(scene)
    for text in ("a small red circle at the top left", "a blue square left of a large yellow triangle",
                 "a purple diamond below a small green circle", "a triangle", "a large square at the centre"):
        assert caption(parse_caption(text)) == text
    assert parse_caption("A Small Red Circle At The Top Left.") == parse_caption("a small red circle at the top left")


def test_top_left_of_reads_as_position_top_and_relation_left_of():
    s = parse_caption("a red circle at the top left of a blue square")
    assert s.objects[0].position == "top" and s.relation == "left of"
    s = parse_caption("a red circle at the top left left of a blue square at the top right")
    assert [o.position for o in s.objects] == ["top left", "top right"] and s.relation == "left of"
    text = "a red circle at the top left left of a blue square at the top right"
    assert oracle.matches(render(s, 1), text)["caption"]


def test_vocabulary_is_closed_and_captions_fit():
    images, captions = data.make_batch("train", 2000, seed=5)
    words = {w for c in captions for w in c.split()}
    assert words <= set(VOCAB)
    assert max(len(c.split()) for c in captions) <= MAX_WORDS
    longest = "a small red circle at the bottom left left of a small red circle at the bottom right"
    assert len(longest.split()) == MAX_WORDS and parse_caption(longest)


def test_free_attributes_are_drawn_and_reported():
    full = complete(parse_caption("a red circle"), 4)
    assert full.complete and full.objects[0].shape == "circle"
    seen = {oracle.read_scene(render(parse_caption("a red circle"), s)).objects[0].position for s in range(60)}
    assert len(seen) >= 6  # the position is free, so it varies with the seed


# -- splits ------------------------------------------------------------------------------------

def test_render_and_splits_are_deterministic_by_seed():
    s = parse_caption("a blue square left of a large yellow triangle")
    assert np.array_equal(render(s, 7), render(s, 7))
    assert np.array_equal(render(s, np.random.default_rng(3)), render(s, np.random.default_rng(3)))
    a, ca = data.make_batch("train", 200, seed=1)
    b, cb = data.make_batch("train", 200, seed=1)
    c, cc = data.make_batch("train", 200, seed=2)
    v, cv = data.make_batch("valid", 200, seed=1)
    assert np.array_equal(a, b) and ca == cb
    assert not np.array_equal(a, c) and ca != cc
    assert not np.array_equal(a, v)
    p, cp = data.make_batch("train", 50, seed=1)
    assert np.array_equal(p, a[:50]) and cp == ca[:50]  # a split is a stream: a smaller n is a prefix


def test_load_shapes_round_trips_through_datasets():
    ds = data.load_shapes("valid", 64, seed=3)
    images, captions = data.make_batch("valid", 64, seed=3)
    assert ds.column_names[:2] == ["image", "caption"] and len(ds) == 64
    back, back_captions = data.as_arrays(ds)
    assert back.dtype == np.uint8 and back.shape == (64, 32, 32, 3)
    assert np.array_equal(back, images) and back_captions == captions
    assert ds.features["image"].dtype == "uint8" and ds[0]["caption"] == captions[0]
    with pytest.raises(UserError, match="split"):
        data.load_shapes("training", 4)


def test_heldout_compositions_never_appear_in_train():
    _, captions, scenes = data.make_batch("train", 5000, seed=0, return_scenes=True)
    for s in scenes:
        assert not any((o.colour, o.shape) in data.HELDOUT_PAIRS for o in s.objects)
        assert data.arrangement(s) not in data.HELDOUT_ARRANGEMENTS
    # nor in the captions: they always state the colours, shapes and relation
    assert not any(data.is_heldout(parse_caption(c)) for c in captions)
    _, held_captions, held = data.make_batch("heldout", 600, seed=0, return_scenes=True)
    assert all(data.is_heldout(s) for s in held)
    pairs = {(o.colour, o.shape) for s in held for o in s.objects} & data.HELDOUT_PAIRS
    arrangements = {data.arrangement(s) for s in held} & data.HELDOUT_ARRANGEMENTS
    assert pairs == data.HELDOUT_PAIRS and arrangements == data.HELDOUT_ARRANGEMENTS
    # a held-out arrangement however it is phrased: "a square below a circle" is "a circle above a square"
    assert data.arrangement(parse_caption("a square below a circle")) == ("circle", "vertical", "square")
    for s in held:  # every object in the heldout split is still drawable and readable
        assert oracle.matches(render(s, 0), caption(strip_positions(s)))["caption"]


# -- the oracle's honesty ----------------------------------------------------------------------

def test_oracle_on_own_and_shuffled_captions(test_split):
    images, captions, _ = test_split
    own, shuffled = oracle.honesty_rows(images, captions, seed=0)
    assert own["n"] == 500 and own["caption"] >= 0.99
    assert all(own[k] >= 0.99 for k in ("shape", "colour", "size", "position", "relation", "count"))
    assert shuffled["caption"] <= 0.05
    assert shuffled["colour"] <= 0.35 and shuffled["shape"] <= 0.4 and shuffled["position"] <= 0.35


def test_oracle_tolerates_noise_and_mild_blur(test_split):
    images, captions, _ = test_split
    x = images / 255.0
    noisy = np.clip(x + np.random.default_rng(0).normal(0, 0.05, x.shape), 0, 1)
    assert oracle.accuracy(noisy, captions)["caption"] >= 0.95
    k = np.array([1, 2, 1]) / 4  # a 3x3 binomial blur (sigma ~ 0.7 px), as a decoder might smear
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    rows = sum(k[i] * pad[:, i:i + 32] for i in range(3))
    blurred = sum(k[j] * rows[:, :, j:j + 32] for j in range(3))
    assert oracle.accuracy(blurred, captions)["caption"] >= 0.95
