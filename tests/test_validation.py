"""Validation collects every error in ComfyUI's structured shape before anything runs."""
from graph.validation import validate_prompt


def check(runtime, prompt, targets=None):
    return validate_prompt(prompt, runtime.registry, targets)


def errors_of(result, node_id):
    return [e["type"] for e in result.node_errors[node_id]["errors"]]


def test_valid_prompt_is_normalised(runtime):
    result = check(runtime, {"1": {"class_type": "TestValue", "inputs": {"value": "12", "junk": 5}},
                             "2": {"class_type": "TestOutput", "inputs": {"value": [1, 0]}}})
    assert result.ok and result.outputs == ["2"]
    assert result.prompt["1"]["inputs"] == {"value": 12}  # cast back, undeclared literal dropped
    assert result.prompt["2"]["inputs"]["value"] == ["1", 0]  # int id accepted as a string id


def test_every_error_is_collected_with_its_node_and_input(runtime):
    prompt = {
        "1": {"class_type": "TestValue", "inputs": {"value": 5000000}},  # above max
        "2": {"class_type": "TestValue", "inputs": {"value": -5000000}},  # below min
        "3": {"class_type": "TestSampler", "inputs": {"model": ["1", 0], "positive": ["9", 0], "negative": ["1", 3],
                                                      "latent": ["4", 0], "seed": 1, "mode": "medium"}},
        "4": {"class_type": "TestFingerprint", "inputs": {"token": "x"}},
        "5": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}},
        "6": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}},
        "7": {"class_type": "TestAdd", "inputs": {"b": 1}},
        "8": {"class_type": "TestOutput", "inputs": {"value": ["7", 0]}},
        "10": {"class_type": "TestValue", "inputs": {"value": "feeds nothing"}},
    }
    result = check(runtime, prompt)
    assert not result.ok
    assert result.error["type"] == "prompt_outputs_failed_validation"
    assert errors_of(result, "3") == ["bad_linked_input", "bad_linked_input", "return_type_mismatch",
                                      "value_not_in_list"]
    assert errors_of(result, "2") == ["value_smaller_than_min"]
    assert errors_of(result, "7") == ["required_input_missing"]
    assert result.node_errors["7"]["errors"][0]["extra_info"]["input_name"] == "a"
    assert result.node_errors["3"]["dependent_outputs"] == ["5"]
    assert result.node_errors["2"]["class_type"] == "TestValue"
    assert errors_of(result, "1") == ["value_bigger_than_max"]
    assert "10" not in result.node_errors  # only nodes that outputs need are checked
    details = result.error["details"]
    assert "not in ['fast', 'slow']" in details and "node '9'" in details


def test_value_above_max_names_the_limit(runtime):
    result = check(runtime, {"1": {"class_type": "TestValue", "inputs": {"value": 5000000}},
                             "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
    err = result.node_errors["1"]["errors"][0]
    assert err["type"] == "value_bigger_than_max" and "1000000" in err["message"]
    assert err["extra_info"]["input_name"] == "value" and err["extra_info"]["received_value"] == 5000000


def test_wrong_literal_types(runtime):
    for bad in [True, 1.5, "abc", {"a": 1}, None, float("inf")]:
        result = check(runtime, {"1": {"class_type": "TestValue", "inputs": {"value": bad}},
                                 "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
        assert errors_of(result, "1") == ["invalid_input_type"], bad
    result = check(runtime, {"1": {"class_type": "TestSlow", "inputs": {"steps": 1, "delay": float("nan")}},
                             "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}})
    assert errors_of(result, "1") == ["invalid_input_type"]


def test_literal_list_must_be_wrapped(runtime):
    result = check(runtime, {"1": {"class_type": "TestOutput", "inputs": {"value": [1, 2, 3]}}})
    assert errors_of(result, "1") == ["bad_linked_input"]
    result = check(runtime, {"1": {"class_type": "TestOutput", "inputs": {"value": {"__value__": [1, 2, 3]}}}})
    assert result.ok


def test_star_type_matches_any_and_unions_overlap(runtime):
    class Union:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"x": ("FLOAT,INT",)}}
        RETURN_TYPES = ("STRING,INT",)
        FUNCTION = "go"
        def go(self, x):
            return (x,)
    runtime.registry.register("Union", Union)
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "Union", "inputs": {"x": ["1", 0]}},
              "3": {"class_type": "Union", "inputs": {"x": ["2", 0]}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    assert check(runtime, prompt).ok


def test_unknown_and_malformed_nodes_are_all_reported(runtime):
    result = check(runtime, {"1": {"class_type": "NoSuchNode", "inputs": {}},
                             "2": {"inputs": {}},
                             "3": "not a node",
                             "4": {"class_type": "TestOutput", "inputs": "nope"},
                             "5": {"class_type": "TestOutput", "inputs": {"value": 1}}})
    assert result.error["type"] == "invalid_prompt"
    assert set(result.node_errors) == {"1", "2", "3", "4"}
    assert "NoSuchNode" in result.node_errors["1"]["errors"][0]["details"]


def test_cycles_are_reported_on_every_member(runtime):
    prompt = {"1": {"class_type": "TestAdd", "inputs": {"a": ["3", 0], "b": 1}},
              "2": {"class_type": "TestAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "3": {"class_type": "TestAdd", "inputs": {"a": ["2", 0], "b": 1}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "TestAdd", "inputs": {"a": ["5", 0], "b": 1}}}
    result = check(runtime, prompt)
    assert not result.ok
    for node_id in "1235":
        assert errors_of(result, node_id) == ["dependency_cycle"]


def test_no_output_node(runtime):
    result = check(runtime, {"1": {"class_type": "TestValue", "inputs": {"value": 1}}})
    assert result.error["type"] == "prompt_no_outputs"
    assert check(runtime, {}).error["type"] == "prompt_no_outputs"
    assert check(runtime, {"1": {"class_type": "TestOutput", "inputs": {"value": 1}}}, targets=[]).error[
        "type"] == "prompt_no_outputs"


def test_not_a_prompt(runtime):
    for doc in [None, [], "x", 3]:
        assert check(runtime, doc).error["type"] == "invalid_prompt"


def test_custom_validation(runtime):
    ok = {"1": {"class_type": "TestValidated", "inputs": {"value": 3}},
          "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}
    assert check(runtime, ok).ok
    ok["1"]["inputs"]["value"] = 7
    result = check(runtime, ok)
    assert errors_of(result, "1") == ["custom_validation_failed"]
    assert result.node_errors["1"]["errors"][0]["details"] == "seven is not allowed"
    ok["1"]["inputs"]["value"] = 50  # VALIDATE_INPUTS names `value`, so the engine skips its max check
    assert check(runtime, ok).ok


def test_validate_inputs_with_input_types_replaces_the_link_type_check(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestAnyType", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestOutput", "inputs": {"value": ["2", 0]}}}
    assert check(runtime, prompt).ok
    prompt["1"] = {"class_type": "TestListOut", "inputs": {"count": 1}}
    prompt["2"]["inputs"]["value"] = ["1", 1]  # a STRING
    assert errors_of(check(runtime, prompt), "2") == ["custom_validation_failed"]


def test_one_valid_output_is_enough_to_run(runtime):
    prompt = {"1": {"class_type": "TestValue", "inputs": {"value": 1}},
              "2": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "TestValue", "inputs": {"value": "x"}},
              "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    result = check(runtime, prompt)
    assert result.ok and result.outputs == ["2"] and "3" in result.node_errors
