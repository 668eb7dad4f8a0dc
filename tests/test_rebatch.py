"""RebatchImages and RebatchLatents (ComfyUI's comfy_extras.nodes_rebatch): regroup lists of
batches into batches of a chosen size."""
import torch

from tests.node_helpers import builtin_registry, call_in_context


def rebatch(name, values, size):
    registry = builtin_registry()
    key = "images" if name == "RebatchImages" else "latents"
    (out,) = call_in_context(registry, name, **{key: values, "batch_size": [size]})
    return out


def test_images_are_split_and_joined_into_batches_in_order():
    images = [torch.arange(i, i + n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 2, 2, 3)
              for i, n in ((0, 2), (2, 3))]  # a batch of 2 then a batch of 3: frames 0..4
    out = rebatch("RebatchImages", images, 2)
    assert [b.shape[0] for b in out] == [2, 2, 1]
    assert [b[:, 0, 0, 0].tolist() for b in out] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    (whole,) = rebatch("RebatchImages", images, 10)
    assert whole.shape == (5, 2, 2, 3)


def test_latents_rebatch_with_their_indices_and_masks():
    small = {"samples": torch.zeros(3, 4, 2, 2)}
    masked = {"samples": torch.ones(2, 4, 2, 2), "noise_mask": torch.full((1, 1, 16, 16), 0.5),
              "batch_index": [40, 41]}
    out = rebatch("RebatchLatents", [small, masked], 2)
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1]
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 40], [41]]
    assert "noise_mask" not in out[0]  # only all-ones masks: dropped again
    assert out[1]["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.5]  # the mask repeated over its batch
    assert out[2]["samples"].sum() == 4 * 2 * 2  # the last latent of the masked batch


def test_latents_of_another_size_start_a_new_batch():
    a = {"samples": torch.zeros(1, 4, 2, 2)}
    b = {"samples": torch.zeros(1, 4, 3, 3)}
    out = rebatch("RebatchLatents", [a, a, b], 4)
    assert [tuple(o["samples"].shape) for o in out] == [(2, 4, 2, 2), (1, 4, 3, 3)]
    assert [o["batch_index"] for o in out] == [[0, 1], [2]]


def test_rebatch_runs_in_a_graph_of_list_outputs(runtime):
    # three 1-image batches from a list-making node, rebatched into one batch of three
    registry = runtime.registry
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 2, "batch_size": 3, "color": 0}},
              "2": {"class_type": "RebatchImages", "inputs": {"images": ["1", 0], "batch_size": 1}},
              "3": {"class_type": "RebatchImages", "inputs": {"images": ["2", 0], "batch_size": 3}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
              "5": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    result = runtime.executor.run(prompt)
    assert result.ok, result.error
    assert result.outputs["4"]["text"] == ["Tensor(shape=[3, 2, 2, 3], dtype=torch.float32)"]
    assert len(result.outputs["5"]["text"]) == 3  # one preview call per item of the list
    assert registry.get("RebatchImages").describe()["output_is_list"] == [True]
