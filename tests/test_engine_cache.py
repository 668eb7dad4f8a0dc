"""Caching across prompts, run under every cache policy (classic, lru:100, none)."""
import copy

from tests.conftest import calls


def t2i_shaped():
    """The default text-to-image graph's shape, with counting test nodes in place of models."""
    return {
        "4": {"class_type": "TestValue", "inputs": {"value": 1}},  # checkpoint loader
        "6": {"class_type": "TestAdd", "inputs": {"a": ["4", 0], "b": 10}},  # positive encode
        "7": {"class_type": "TestAdd", "inputs": {"a": ["4", 0], "b": 20}},  # negative encode
        "5": {"class_type": "TestValue", "inputs": {"value": 0}},  # empty latent
        "3": {"class_type": "TestSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                      "latent": ["5", 0], "seed": 8566257, "mode": "fast"}},
        "8": {"class_type": "TestAdd", "inputs": {"a": ["3", 0], "b": 0}},  # decode
        "9": {"class_type": "TestOutput", "inputs": {"value": ["8", 0]}},  # save
    }


def run(rt, prompt, **kw):
    events = []
    result = rt.executor.run(copy.deepcopy(prompt), emit=lambda e, d: events.append((e, d)), **kw)
    assert result.ok, result.error
    return result, events


def test_rerunning_the_same_prompt_executes_nothing(cached_runtime):
    rt = cached_runtime
    first, _ = run(rt, t2i_shaped())
    assert len(first.executed) == 7
    second, events = run(rt, t2i_shaped())
    if rt.policy == "none":
        assert len(second.executed) == 7
    else:
        assert second.executed == []
        assert sorted(second.cached) == sorted(t2i_shaped())
        # a cached output node still reports its UI, as ComfyUI re-sends `executed`
        assert ("executed", {"node": "9", "display_node": "9", "output": first.outputs["9"],
                             "prompt_id": second.prompt_id}) in events
    assert second.outputs == first.outputs


def test_changing_only_the_seed_reruns_the_sampler_and_what_follows(cached_runtime):
    rt = cached_runtime
    run(rt, t2i_shaped())
    before = dict(calls(rt))
    prompt = t2i_shaped()
    prompt["3"]["inputs"]["seed"] = 1234
    result, _ = run(rt, prompt)
    if rt.policy == "none":
        assert len(result.executed) == 7
        return
    assert sorted(result.executed) == ["3", "8", "9"]
    assert calls(rt)["TestValue"] == before["TestValue"]  # loader and latent were not re-run
    assert calls(rt)["TestSampler"] == before["TestSampler"] + 1


def test_node_ids_and_layout_do_not_matter_to_the_cache(cached_runtime):
    rt = cached_runtime
    run(rt, t2i_shaped())
    renamed = {f"n{k}": {"class_type": v["class_type"],
                         "inputs": {name: ([f"n{x[0]}", x[1]] if isinstance(x, list) else x)
                                    for name, x in v["inputs"].items()}}
               for k, v in t2i_shaped().items()}
    result, _ = run(rt, renamed)
    if rt.policy == "none":  # nothing was kept: every renamed node runs
        assert sorted(result.executed) == sorted(renamed)
    else:
        assert result.executed == [] and sorted(result.cached) == sorted(renamed)


def test_is_changed_nan_always_reruns(cached_runtime):
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestVolatile", "inputs": {"value": 3}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    run(rt, prompt)
    result, _ = run(rt, prompt)
    assert result.executed == ["1", "2"]
    assert calls(rt)["TestVolatile"] == 2


def test_stable_is_changed_value_keeps_the_cache_until_it_changes(cached_runtime):
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestFingerprint", "inputs": {"token": "abc"}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    run(rt, prompt)
    result, _ = run(rt, prompt)
    assert result.executed == ([] if rt.policy != "none" else ["1", "2"])
    prompt["1"]["inputs"]["token"] = "xyz"
    result, _ = run(rt, prompt)
    assert result.executed == ["1", "2"]


def test_lru_keeps_other_prompts_while_classic_keeps_only_the_last(cached_runtime):
    rt = cached_runtime
    a = t2i_shaped()
    b = t2i_shaped()
    b["4"]["inputs"]["value"] = 2  # a different model: nothing shared with a
    run(rt, a)
    run(rt, b)
    result, _ = run(rt, a)
    expected = {"classic": 6, "lru:100": 0, "none": 7}[rt.policy]  # node 5 is shared by a and b
    assert len(result.executed) == expected


def t2i_variant(value: int) -> dict:
    prompt = t2i_shaped()
    prompt["4"]["inputs"]["value"] = value  # 6 nodes of their own, node 5 shared with every variant
    return prompt


def test_lru_size_counts_node_results_not_prompts(tmp_path):
    """As ComfyUI's --cache-lru N: at a prompt's start, whole generations of results are dropped,
    oldest first, while more than N results are held. After prompts a, b, c (7 + 6 + 6 results),
    c's start holds 13: with room for 13 nothing goes, with room for 12 a's own 6 go."""
    from tests.conftest import make_runtime

    for size, held, a_reruns in ((13, 19, 0), (12, 13, 6)):
        rt = make_runtime(tmp_path / str(size), "--cache-lru", str(size))
        a, b, c = t2i_variant(100), t2i_variant(101), t2i_variant(102)
        for prompt in (a, b, c):
            run(rt, prompt)
        assert len(rt.executor.cache) == held  # what c makes is kept until the next prompt starts
        assert len(run(rt, a)[0].executed) == a_reruns, size


def test_lru_never_drops_what_the_starting_prompt_uses(tmp_path):
    from tests.conftest import make_runtime

    rt = make_runtime(tmp_path, "--cache-lru", "1")
    run(rt, t2i_variant(100))
    assert len(run(rt, t2i_variant(100))[0].executed) == 0  # 7 results > 1, but all in use
    assert len(run(rt, t2i_variant(101))[0].executed) == 6
    assert len(run(rt, t2i_variant(100))[0].executed) == 6  # dropped when variant 101 started


def test_cache_lru_zero_is_classic_caching_as_in_comfyui():
    from app.args import parse_args

    assert parse_args(["--cache-lru", "0"]).cache == "classic"
    assert parse_args(["--cache-lru", "5"]).cache == "lru:5"
    assert parse_args([]).cache == "classic"


def test_identical_nodes_in_one_prompt_run_once_with_a_retaining_cache(cached_runtime):
    """ComfyUI looks a node up in the cache when it is about to run, so a node identical to one
    that already ran in this prompt takes its outputs (without a cache both run)."""
    rt = cached_runtime
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 3}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
              "5": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    result, _ = run(rt, prompt)
    assert result.outputs["4"] == result.outputs["5"] == {"text": ["4"]}
    assert calls(rt)["TestAdd"] == (2 if rt.policy == "none" else 1)


def test_cache_holds_references_not_copies(cached_runtime):
    rt = cached_runtime
    pack = rt.registry.get("TestTensor").cls
    sink = rt.registry.get("TestTensorSink").cls
    pack.last.clear()
    sink.seen.clear()
    prompt = {"1": {"class_type": "TestTensor", "inputs": {"size": 1 << 20}},
              "2": {"class_type": "TestTensorSink", "inputs": {"tensor": ["1", 0]}}}
    run(rt, prompt)
    assert len(sink.seen) == 1 and sink.seen[0] is pack.last[0]
    prompt["3"] = {"class_type": "TestOutput"}  # a new consumer, served from the cache
    prompt["3"]["inputs"] = {"value": ["1", 0]}
    run(rt, prompt)
    if rt.policy != "none":
        assert len(pack.last) == 1  # the producer did not run again


def test_none_policy_frees_outputs_once_consumed(tmp_path):
    import gc
    import weakref

    from tests.conftest import make_runtime

    rt = make_runtime(tmp_path, "--cache-none")
    pack = rt.registry.get("TestTensor").cls
    sink = rt.registry.get("TestTensorSink").cls
    pack.last.clear()
    prompt = {"1": {"class_type": "TestTensor", "inputs": {"size": 1 << 20}},
              "2": {"class_type": "TestTensorSink", "inputs": {"tensor": ["1", 0]}}}
    run(rt, prompt)
    ref = weakref.ref(pack.last.pop())
    sink.seen.clear()
    gc.collect()
    assert ref() is None  # nothing in the engine still holds the tensor
