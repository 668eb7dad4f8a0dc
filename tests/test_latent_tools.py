"""Latent tools through the node registry, against worked examples with hand-computed answers."""
import pytest
import torch
import torch.nn.functional as F

from tests.node_helpers import builtin_registry, call_node


@pytest.fixture(scope="module")
def registry():
    return builtin_registry()


@pytest.fixture
def node(registry):
    return lambda name, **inputs: call_node(registry, name, inputs)


def ramp(b=1, c=4, h=4, w=4):
    return torch.arange(float(b * c * h * w)).reshape(b, c, h, w)


def test_composite_pastes_in_latent_cells_and_cuts_at_the_edge(node):
    to = {"samples": torch.zeros(1, 4, 6, 6), "noise_mask": torch.ones(1, 1, 48, 48)}
    frm = {"samples": torch.ones(1, 4, 4, 4), "batch_index": [7]}
    (out,) = node("LatentComposite", samples_to=to, samples_from=frm, x=35, y=8, feather=0)
    # x = 35 px -> cell 4 (floored), y = 8 px -> cell 1; only 2 columns fit.
    want = torch.zeros(1, 4, 6, 6)
    want[:, :, 1:5, 4:6] = 1.0
    assert torch.equal(out["samples"], want)
    assert out["noise_mask"] is to["noise_mask"] and "batch_index" not in out  # samples_to's keys ride along
    assert torch.equal(to["samples"], torch.zeros(1, 4, 6, 6))  # the input was not written to
    with pytest.raises(ValueError, match="outside samples_to"):
        node("LatentComposite", samples_to=to, samples_from=frm, x=48, y=0, feather=0)
    with pytest.raises(ValueError, match="channels"):
        node("LatentComposite", samples_to=to, samples_from={"samples": torch.ones(1, 16, 2, 2)}, x=0, y=0,
             feather=0)


def test_composite_feather_ramps_only_inner_edges(node):
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    frm = {"samples": torch.ones(1, 1, 4, 8)}
    # Pasted at row 2 (y = 16 px), full width: the top edge (row 2) and bottom edge (row 5) lie
    # inside the target and ramp over feather = 16 px = 2 cells: weights 1/2, 1, 1, 1/2 by row.
    # Left and right edges are on the border and stay hard.
    (out,) = node("LatentComposite", samples_to=to, samples_from=frm, x=0, y=16, feather=16)
    rows = out["samples"][0, 0, :, 3].tolist()
    assert rows == [0.0, 0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]
    assert torch.equal(out["samples"][0, 0, 2], torch.full((8,), 0.5))
    # Pasted at (8, 8) px into the middle, a 4x4 patch over a background of 2s: each inner edge ramps
    # 1/2 -> 1, corners multiply both ramps (1/4), and the background fills the rest of the weight.
    to2 = {"samples": torch.full((1, 1, 8, 8), 2.0)}
    (out,) = node("LatentComposite", samples_to=to2, samples_from={"samples": torch.ones(1, 1, 4, 4)}, x=8, y=8,
                  feather=16)
    w = torch.tensor([0.5, 1.0, 1.0, 0.5])
    weights = w[:, None] * w[None, :]
    assert torch.allclose(out["samples"][0, 0, 1:5, 1:5], weights * 1.0 + (1 - weights) * 2.0)
    assert torch.equal(out["samples"][0, 0, 0], torch.full((8,), 2.0))


def test_blend_weights_and_resizes_the_second(node):
    a = {"samples": torch.full((1, 4, 4, 4), 2.0), "noise_mask": torch.zeros(1, 1, 32, 32)}
    b = {"samples": torch.full((1, 4, 4, 4), 10.0)}
    (out,) = node("LatentBlend", samples1=a, samples2=b, blend_factor=0.25)
    assert torch.allclose(out["samples"], torch.full((1, 4, 4, 4), 0.25 * 2 + 0.75 * 10))
    assert out["noise_mask"] is a["noise_mask"]
    # A differently sized samples2 is centre-cropped to the aspect and resized bicubically first.
    big = {"samples": torch.randn(1, 4, 4, 8, generator=torch.Generator().manual_seed(0))}
    (out,) = node("LatentBlend", samples1=a, samples2=big, blend_factor=0.5)
    resized = F.interpolate(big["samples"][..., 2:6], size=(4, 4), mode="bicubic")
    assert torch.allclose(out["samples"], 0.5 * a["samples"] + 0.5 * resized, atol=1e-6)


def test_from_batch_slices_and_records_batch_index(node):
    lat = {"samples": ramp(b=5, c=1, h=1, w=1)}
    (out,) = node("LatentFromBatch", samples=lat, batch_index=1, length=2)
    assert out["samples"].flatten().tolist() == [1.0, 2.0] and out["batch_index"] == [1, 2]
    # Clamped to the batch: index 9 -> 4, length cut to what is left.
    (out,) = node("LatentFromBatch", samples=lat, batch_index=9, length=3)
    assert out["samples"].flatten().tolist() == [4.0] and out["batch_index"] == [4]
    # An existing batch_index list is sliced, not renumbered.
    (out2,) = node("LatentFromBatch", samples={**lat, "batch_index": [10, 11, 12, 13, 14]}, batch_index=3, length=5)
    assert out2["batch_index"] == [13, 14]


def test_from_batch_noise_masks(node):
    one = torch.ones(1, 1, 8, 8)
    lat = {"samples": torch.zeros(4, 4, 1, 1), "noise_mask": one}
    (out,) = node("LatentFromBatch", samples=lat, batch_index=2, length=2)
    assert torch.equal(out["noise_mask"], one) and out["noise_mask"] is not one  # one mask: kept (copied)
    # Two masks for a batch of four cycle as 0, 1, 0, 1 before slicing.
    masks = torch.arange(2.0).reshape(2, 1, 1, 1)
    (out,) = node("LatentFromBatch", samples={**lat, "noise_mask": masks}, batch_index=1, length=3)
    assert out["noise_mask"].flatten().tolist() == [1.0, 0.0, 1.0]


def test_repeat_batch_continues_batch_indices(node):
    lat = {"samples": ramp(b=2, c=1, h=1, w=1), "batch_index": [3, 5]}
    (out,) = node("RepeatLatentBatch", samples=lat, amount=3)
    assert out["samples"].flatten().tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    # offset = max - min + 1 = 3: copies are shifted by 3 and 6.
    assert out["batch_index"] == [3, 5, 6, 8, 9, 11]
    (plain,) = node("RepeatLatentBatch", samples={"samples": lat["samples"]}, amount=2)
    assert "batch_index" not in plain and plain["samples"].shape[0] == 4
    single = torch.ones(1, 1, 8, 8)
    (out,) = node("RepeatLatentBatch", samples={**lat, "noise_mask": single}, amount=3)
    assert out["noise_mask"] is single  # one mask already covers every copy
    masks = torch.arange(2.0).reshape(2, 1, 1, 1)
    (out,) = node("RepeatLatentBatch", samples={**lat, "noise_mask": masks}, amount=2)
    assert out["noise_mask"].flatten().tolist() == [0.0, 1.0, 0.0, 1.0]


def test_latent_batch_concatenates_and_resizes(node):
    a = {"samples": torch.zeros(2, 4, 4, 4), "noise_mask": torch.ones(1, 1, 32, 32)}
    b = {"samples": torch.ones(1, 4, 4, 4), "batch_index": [7]}
    (out,) = node("LatentBatch", samples1=a, samples2=b)
    assert out["samples"].shape == (3, 4, 4, 4) and out["samples"][2].eq(1).all()
    assert out["batch_index"] == [0, 1, 7] and out["noise_mask"] is a["noise_mask"]
    # Another size: samples2 is centre-cropped to samples1's aspect and resized bilinearly.
    wide = {"samples": ramp(b=1, c=4, h=2, w=4)}
    (out,) = node("LatentBatch", samples1=a, samples2=wide)
    want = F.interpolate(wide["samples"][..., 1:3], size=(4, 4), mode="bilinear")
    assert torch.allclose(out["samples"][2:], want) and out["batch_index"] == [0, 1, 0]
    with pytest.raises(ValueError, match="channels"):
        node("LatentBatch", samples1=a, samples2={"samples": torch.zeros(1, 16, 4, 4)})


def test_flip_and_rotate(node):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    mask = torch.ones(1, 1, 16, 16)
    lat = {"samples": x, "noise_mask": mask}
    (v,) = node("LatentFlip", samples=lat, flip_method="x-axis: vertically")
    (h,) = node("LatentFlip", samples=lat, flip_method="y-axis: horizontally")
    assert v["samples"].flatten().tolist() == [3.0, 4.0, 1.0, 2.0]
    assert h["samples"].flatten().tolist() == [2.0, 1.0, 4.0, 3.0]
    assert v["noise_mask"] is mask  # ComfyUI leaves the mask as it is
    turns = {r: node("LatentRotate", samples=lat, rotation=r)[0]["samples"].flatten().tolist()
             for r in ("none", "90 degrees", "180 degrees", "270 degrees")}
    # Clockwise: [[1, 2], [3, 4]] -> [[3, 1], [4, 2]].
    assert turns == {"none": [1.0, 2.0, 3.0, 4.0], "90 degrees": [3.0, 1.0, 4.0, 2.0],
                     "180 degrees": [4.0, 3.0, 2.0, 1.0], "270 degrees": [2.0, 4.0, 1.0, 3.0]}
    tall = {"samples": torch.zeros(1, 4, 6, 2)}
    assert node("LatentRotate", samples=tall, rotation="90 degrees")[0]["samples"].shape == (1, 4, 2, 6)


def test_crop_window_and_minimum(node):
    lat = {"samples": ramp(b=1, c=1, h=12, w=10), "noise_mask": torch.ones(1, 1, 96, 80)}
    (out,) = node("LatentCrop", samples=lat, width=64, height=72, x=15, y=16)
    # x = 15 px -> cell 1, y -> cell 2; 8 x 9 cells.
    assert torch.equal(out["samples"], lat["samples"][:, :, 2:11, 1:9])
    assert out["noise_mask"] is lat["noise_mask"]
    # x, y pulled back so 8 cells remain: x <= 10 - 8 = 2, y <= 12 - 8 = 4; the window is cut at the edge.
    (out,) = node("LatentCrop", samples=lat, width=512, height=512, x=800, y=800)
    assert torch.equal(out["samples"], lat["samples"][:, :, 4:, 2:])
    with pytest.raises(ValueError, match="minimum"):
        node("LatentCrop", samples={"samples": torch.zeros(1, 4, 4, 4)}, width=64, height=64, x=0, y=0)


def test_bad_latent_input_is_named(node):
    with pytest.raises(TypeError, match="samples1"):
        node("LatentBlend", samples1=torch.zeros(1, 4, 4, 4), samples2={"samples": torch.zeros(1, 4, 4, 4)},
             blend_factor=0.5)
