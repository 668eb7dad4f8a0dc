"""The built-in model's data set (diffusion.training.shapes): captions say what is drawn, held-out
combinations never reach training, and the judge that scores generated pictures is right about
the drawings themselves and wrong-footed by pictures that do not follow the prompt."""
import random

import numpy as np

from diffusion.training import shapes
from diffusion.training.shapes import Scene


def test_captions_name_every_part_and_leave_out_what_they_are_told():
    scene = Scene("red", "circle", "small", "top left", "blue")
    assert scene.caption() == "a small red circle at the top left on a blue background"
    assert scene.caption(frozenset({"size", "background"})) == "a red circle at the top left"
    assert Scene("green", "square", "large", "center", "white").caption() == \
        "a large green square in the center on a white background"
    rng = random.Random(0)
    captions = [shapes.sample_caption(scene, rng) for _ in range(2000)]
    assert 0.06 < captions.count("") / len(captions) < 0.14
    assert all(c == "" or ("red circle" in c) for c in captions)


def test_held_out_combinations_are_never_drawn_for_training():
    stream = shapes.training_stream(3)
    drawn = [next(stream) for _ in range(20000)]
    assert not any(s.held_out for s in drawn)
    assert {(s.colour, s.shape) for s in drawn} == \
        {(c, s) for c in shapes.COLOURS for s in shapes.SHAPES} - shapes.HELD_OUT_SHAPES
    evaluation = shapes.evaluation_scenes()
    assert {s.colour for s in evaluation} == set(shapes.COLOURS)
    assert {s.shape for s in evaluation} == set(shapes.SHAPES)
    assert {s.position for s in evaluation} == set(shapes.POSITIONS)
    held = {(s.colour, s.shape) for s in evaluation} & shapes.HELD_OUT_SHAPES
    assert held == shapes.HELD_OUT_SHAPES
    assert {(s.colour, s.background) for s in evaluation} >= shapes.HELD_OUT_BACKGROUNDS


def test_drawings_put_the_shape_where_the_caption_says():
    scene = Scene("yellow", "square", "large", "bottom right", "black")
    image = shapes.draw(scene)
    labels = shapes.palette_labels(image)
    yellow, black = list(shapes.COLOURS).index("yellow"), list(shapes.COLOURS).index("black")
    assert labels[52, 52] == yellow and labels[10, 10] == black and labels[52, 10] == black
    assert abs((labels == yellow).sum() - 24 * 24) < 40


def test_the_judge_accepts_the_drawings_themselves():
    rng = random.Random(1)
    scenes = shapes.all_scenes()[::7]
    judged = [shapes.judge(shapes.draw(s, rng), s) for s in scenes]
    assert np.mean([j.all_ok for j in judged]) > 0.98


def test_the_judge_rejects_pictures_that_do_not_follow_the_prompt():
    asked = Scene("red", "triangle", "large", "top left", "blue")
    cases = {
        "colour": Scene("green", "triangle", "large", "top left", "blue"),
        "place": Scene("red", "triangle", "large", "bottom right", "blue"),
        "background": Scene("red", "triangle", "large", "top left", "white"),
        "shape": Scene("red", "square", "large", "top left", "blue"),
    }
    for what, drawn in cases.items():
        verdict = shapes.judge(shapes.draw(drawn), asked)
        assert not verdict.all_ok, what
    assert not shapes.judge(shapes.draw(cases["colour"]), asked).colour_ok
    assert not shapes.judge(shapes.draw(cases["background"]), asked).background_ok
    assert shapes.judge(shapes.draw(cases["shape"]), asked).seen_shape == "square"
    blank = np.zeros((64, 64, 3), np.uint8) + np.array(shapes.COLOURS["blue"], np.uint8)
    assert shapes.judge(blank, asked).seen_shape == "none"
