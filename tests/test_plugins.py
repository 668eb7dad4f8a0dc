import textwrap
from pathlib import Path

import pytest

from app.plugins import PackResult, find_packs, load_custom_nodes
from graph.registry import NodeRegistry
from graph.validation import validate_prompt

REPO_CUSTOM_NODES = Path(__file__).resolve().parent.parent / "custom_nodes"

GOOD = '''
class Echo:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}}
    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "testing"
    def run(self, text):
        return (text + "!",)

NODE_CLASS_MAPPINGS = {"Echo": Echo}
NODE_DISPLAY_NAME_MAPPINGS = {"Echo": "Echo Text"}
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def packs_dir(tmp_path):
    d = tmp_path / "custom_nodes"
    write(d / "good_pack.py", GOOD)
    write(d / "syntax_pack.py", "x = 1\ndef oops(:\n    pass\n")
    write(d / "missing_import_pack.py", "import lg_module_that_does_not_exist\nNODE_CLASS_MAPPINGS = {}\n")
    write(d / "raising_pack.py", "raise RuntimeError('pack exploded on import')\n")
    write(d / "not_a_dict_pack.py", "NODE_CLASS_MAPPINGS = [1, 2]\n")
    write(d / "rel_pack" / "__init__.py", "from .impl import Shout\nNODE_CLASS_MAPPINGS = {'Shout': Shout}\n"
                                         "WEB_DIRECTORY = './js'\n")
    write(d / "rel_pack" / "impl.py", GOOD.replace("Echo", "Shout").replace('"!"', '"!!!"'))
    write(d / "rel_pack" / "js" / "ext.js", "export const X = 1;\n")
    write(d / "off_pack.py.disabled", GOOD.replace("Echo", "Disabled1"))
    write(d / "off_dir.disabled" / "__init__.py", GOOD.replace("Echo", "Disabled2"))
    write(d / "notes.txt", "not python")
    write(d / ".hidden.py", GOOD.replace("Echo", "Hidden"))
    write(d / "no_init_dir" / "thing.py", GOOD.replace("Echo", "NoInit"))
    return d


def load(dirs):
    registry = NodeRegistry()
    lines: list[str] = []
    results = load_custom_nodes(registry, dirs, log=lines.append)
    return registry, results, lines


def test_find_packs_skips_what_is_not_a_pack(packs_dir):
    names = [p.name for p in find_packs(packs_dir)]
    assert names == ["good_pack.py", "missing_import_pack.py", "not_a_dict_pack.py", "raising_pack.py",
                     "rel_pack", "syntax_pack.py"]
    assert find_packs(packs_dir / "does_not_exist") == []


def test_good_packs_register_and_bad_ones_are_recorded(packs_dir):
    registry, results, lines = load([packs_dir])
    assert registry.get("Echo").python_module == "custom_nodes.good_pack"
    assert registry.get("Echo").display_name == "Echo Text"
    assert registry.get("Shout").python_module == "custom_nodes.rel_pack"
    node = registry.get("Shout")
    assert node.call(node.instantiate(), None, {"text": "a"}) == ("a!!!",)
    for hidden in ("Disabled1", "Disabled2", "Hidden", "NoInit"):
        assert hidden not in registry
    assert registry.web_directories == {"rel_pack": str((packs_dir / "rel_pack" / "js").resolve())}

    failures = {f.name: f for f in registry.failed_packs}
    assert set(failures) == {"syntax_pack", "missing_import_pack", "raising_pack", "not_a_dict_pack"}
    assert failures["syntax_pack"].error.startswith("SyntaxError:") and "line 2" in failures["syntax_pack"].error
    assert failures["missing_import_pack"].error == \
        "ModuleNotFoundError: No module named 'lg_module_that_does_not_exist'"
    assert failures["raising_pack"].error == "RuntimeError: pack exploded on import"
    assert failures["not_a_dict_pack"].error.startswith("PackError: NODE_CLASS_MAPPINGS must be a dict")
    assert failures["raising_pack"].path == str((packs_dir / "raising_pack.py").resolve())

    by_name = {r.name: r for r in results}
    assert by_name["good_pack"] == PackResult("good_pack", str((packs_dir / "good_pack.py").resolve()),
                                              by_name["good_pack"].seconds, True, None, ["Echo"])
    assert not by_name["raising_pack"].ok and by_name["raising_pack"].error == failures["raising_pack"].error


def test_import_times_are_printed_in_comfyui_format(packs_dir):
    _, results, lines = load([packs_dir])
    header = lines.index("Import times for custom nodes:")
    table = lines[header + 1:]
    assert len(table) == len(results) == 6
    assert f"   0.0 seconds: {(packs_dir / 'good_pack.py').resolve()}" in table
    assert f"   0.0 seconds (IMPORT FAILED): {(packs_dir / 'syntax_pack.py').resolve()}" in table
    assert f"   0.0 seconds: {(packs_dir / 'rel_pack').resolve()}" in table
    assert sum("(IMPORT FAILED)" in line for line in table) == 4
    assert any("Cannot import" in line and "pack exploded on import" in line for line in lines[:header])


def test_import_times_sorted_by_time(tmp_path):
    d = tmp_path / "nodes"
    write(d / "a_slow.py", "import time\ntime.sleep(0.25)\nNODE_CLASS_MAPPINGS = {}\n")
    write(d / "b_fast.py", "NODE_CLASS_MAPPINGS = {}\n")
    _, _, lines = load([d])
    table = lines[lines.index("Import times for custom nodes:") + 1:]
    assert table[0].endswith("b_fast.py") and table[1].endswith("a_slow.py")
    assert table[1].startswith("   0.2 seconds") or table[1].startswith("   0.3 seconds")


def test_nothing_printed_without_packs(tmp_path):
    _, results, lines = load([tmp_path / "empty", tmp_path / "missing"])
    assert results == [] and lines == []


def test_same_named_packs_in_two_dirs_do_not_collide(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d, tag in ((one, "ONE"), (two, "TWO")):
        write(d / "dup" / "__init__.py", "from .impl import VALUE, NODE_CLASS_MAPPINGS\n")
        write(d / "dup" / "impl.py", GOOD.replace("Echo", f"Echo{tag}") + f"\nVALUE = '{tag}'\n")
    registry, results, _ = load([one, two])
    assert all(r.ok for r in results)
    assert registry.get("EchoONE").python_module == registry.get("EchoTWO").python_module == "custom_nodes.dup"
    assert registry.get("EchoONE").cls is not registry.get("EchoTWO").cls


def test_later_plugin_wins_between_plugins_but_not_over_builtins(tmp_path):
    class Builtin:
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}
        RETURN_TYPES = ()
        FUNCTION = "run"

    registry = NodeRegistry()
    registry.register("Echo", Builtin, builtin=True)
    write(tmp_path / "a" / "p1.py", GOOD + "NODE_CLASS_MAPPINGS = {'Echo': Echo, 'Other': Echo}\n")
    write(tmp_path / "b" / "p2.py", GOOD + "NODE_CLASS_MAPPINGS = {'Other': Echo}\n")
    results = load_custom_nodes(registry, [tmp_path / "a", tmp_path / "b"], log=lambda _m: None)
    assert registry.get("Echo").cls is Builtin
    assert registry.get("Echo").python_module == "nodes"
    assert results[0].ok and results[0].nodes == ["Other"]  # Echo refused: it is built in
    assert registry.get("Other").python_module == "custom_nodes.p2"
    assert registry.get("Other").cls.__module__.endswith("_p2")


def test_unknown_node_validation_names_the_failed_pack(packs_dir):
    registry, _, _ = load([packs_dir])
    r = validate_prompt({"1": {"class_type": "BrokenNode", "inputs": {}}}, registry)
    assert not r.ok
    details = r.node_errors["1"]["errors"][0]["details"]
    assert "missing_import_pack" in details and "lg_module_that_does_not_exist" in details
    assert "syntax_pack" in details


def test_pack_without_mappings_or_with_only_v3_entrypoint_fails_clearly(tmp_path):
    d = tmp_path / "n"
    write(d / "empty_pack.py", "X = 1\n")
    write(d / "v3_pack.py", "async def comfy_entrypoint():\n    return None\n")
    write(d / "web_only" / "__init__.py", "WEB_DIRECTORY = 'web'\n")
    write(d / "web_only" / "web" / "a.js", "export const A = 1;\n")
    registry, results, _ = load([d])
    errors = {f.name: f.error for f in registry.failed_packs}
    assert "NODE_CLASS_MAPPINGS" in errors["empty_pack"]
    assert "comfy_entrypoint" in errors["v3_pack"]
    assert "web_only" not in errors and registry.web_directories["web_only"].endswith("web")


def test_sys_exit_in_a_pack_does_not_stop_loading(tmp_path):
    d = tmp_path / "n"
    write(d / "a_exit.py", "import sys\nsys.exit(3)\n")
    write(d / "b_good.py", GOOD)
    registry, results, _ = load([d])
    assert "Echo" in registry and [f.name for f in registry.failed_packs] == ["a_exit"]


def test_repo_example_pack_loads_and_works():
    registry, results, lines = load([REPO_CUSTOM_NODES])
    example = next(r for r in results if r.name == "example_pack")
    assert example.ok, example.error
    assert sorted(example.nodes) == ["ShowText", "TextCase"]
    assert registry.failed_packs == []
    web = Path(registry.web_directories["example_pack"])
    assert web.is_dir() and any(p.suffix == ".js" for p in web.iterdir())

    case = registry.get("TextCase")
    assert case.python_module == "custom_nodes.example_pack"
    assert case.inputs()["case"].choices[:3] == ("upper", "lower", "title")
    assert case.call(case.instantiate(), None, {"text": "hello world", "case": "title"}) == ("Hello World",)
    assert case.call(case.instantiate(), None, {"text": "Hello", "case": "swapcase"}) == ("hELLO",)
    show = registry.get("ShowText")
    assert show.is_output_node
    assert show.call(show.instantiate(), None, {"text": "abc"}) == {"ui": {"text": ["abc"]}, "result": ("abc",)}
    assert "output" in show.describe() and show.describe()["display_name"] == "Show Text"


def test_repo_example_pack_validates_in_a_prompt():
    registry, _, _ = load([REPO_CUSTOM_NODES])
    prompt = {"1": {"class_type": "TextCase", "inputs": {"text": "abc", "case": "upper"}},
              "2": {"class_type": "ShowText", "inputs": {"text": ["1", 0]}}}
    assert validate_prompt(prompt, registry).ok
    bad = {"1": {"class_type": "TextCase", "inputs": {"text": "abc", "case": "sideways"}},
           "2": {"class_type": "ShowText", "inputs": {"text": ["1", 0]}}}
    assert not validate_prompt(bad, registry).ok


def test_web_directory_from_pyproject(tmp_path):
    d = tmp_path / "n"
    write(d / "tomlpack" / "__init__.py", "NODE_CLASS_MAPPINGS = {}\n")
    write(d / "tomlpack" / "pyproject.toml", "[tool.comfy]\nweb = \"frontend\"\n")
    (d / "tomlpack" / "frontend").mkdir()
    write(d / "gone" / "__init__.py", "NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = './missing'\n")
    registry, results, _ = load([d])
    assert all(r.ok for r in results)
    assert registry.web_directories == {"tomlpack": str((d / "tomlpack" / "frontend").resolve())}


def test_a_library_a_pack_drops_from_sys_modules_is_not_imported_twice(tmp_path, monkeypatch):
    """UltimateSDUpscale unloads every module first imported during its import; a library with a
    once-per-process side effect (torch._dynamo registers operator libraries) must not run again
    when the next pack imports it. The pack's own modules stay dropped."""
    import sys

    lib = tmp_path / "site"
    write(lib / "lg_once_lib" / "__init__.py", textwrap.dedent("""
        import builtins
        builtins.lg_once_lib_runs = getattr(builtins, "lg_once_lib_runs", 0) + 1
        if builtins.lg_once_lib_runs > 1:
            raise RuntimeError("registered twice")
        from . import part
    """))
    write(lib / "lg_once_lib" / "part.py", "VALUE = 7\n")
    monkeypatch.syspath_prepend(str(lib))
    packs = tmp_path / "custom_nodes"
    write(packs / "a_dropper" / "lg_dropper_own.py", "X = 1\n")
    write(packs / "a_dropper" / "__init__.py", textwrap.dedent("""
        import os, sys
        sys.path.insert(0, os.path.dirname(__file__))
        original = sys.modules.copy()
        import lg_dropper_own
        import lg_once_lib.part
        for name in [m for m in sys.modules if m not in original]:
            del sys.modules[name]
        NODE_CLASS_MAPPINGS = {}
    """))
    write(packs / "b_user.py", "import lg_once_lib.part\nassert lg_once_lib.part.VALUE == 7\nNODE_CLASS_MAPPINGS = {}\n")
    try:
        results = load_custom_nodes(NodeRegistry(), [packs], log=lambda m: None)
        assert [(r.name, r.ok) for r in results] == [("a_dropper", True), ("b_user", True)], results
        import builtins
        assert builtins.lg_once_lib_runs == 1
        assert "lg_once_lib.part" in sys.modules, [m for m in sys.modules if "lg_" in m]
        assert "lg_dropper_own" not in sys.modules
    finally:
        for name in [m for m in sys.modules if m.startswith(("lg_once_lib", "lg_dropper_own"))]:
            del sys.modules[name]
        import builtins
        if hasattr(builtins, "lg_once_lib_runs"):
            del builtins.lg_once_lib_runs
