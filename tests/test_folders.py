import os
from pathlib import Path

import pytest

from app.folders import FolderPaths, UnsafePath, safe_join


@pytest.fixture
def folders(tmp_path):
    return FolderPaths(tmp_path / "base")


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_constructor_creates_the_folders(tmp_path):
    f = FolderPaths(tmp_path / "base", output_directory=tmp_path / "elsewhere")
    base = tmp_path / "base"
    for d in ("models/checkpoints", "models/loras", "models/vae", "models/text_encoders", "models/clip",
              "models/unet", "models/diffusion_models", "models/controlnet", "models/t2i_adapter",
              "models/embeddings", "models/upscale_models", "input", "temp", "user", "custom_nodes"):
        assert (base / d).is_dir(), d
    assert not (base / "output").exists()
    assert (tmp_path / "elsewhere").is_dir() and f.output_dir == (tmp_path / "elsewhere").resolve()
    assert f.custom_nodes_dirs == [base.resolve() / "custom_nodes"]


def test_create_false_touches_nothing(tmp_path):
    FolderPaths(tmp_path / "base", create=False)
    assert not (tmp_path / "base").exists()


def test_temp_directory_flag_gets_its_own_subfolder(tmp_path):
    f = FolderPaths(tmp_path / "base", temp_directory=tmp_path / "scratch")
    assert f.temp_dir == (tmp_path / "scratch" / "temp").resolve()


def test_model_dirs_defaults_and_aliases(folders):
    models = folders.base / "models"
    assert folders.model_dirs("checkpoints") == [models / "checkpoints", folders.output_dir / "checkpoints"]
    assert folders.model_dirs("clip") == folders.model_dirs("text_encoders")
    assert folders.model_dirs("unet") == [models / "unet", models / "diffusion_models",
                                          folders.output_dir / "diffusion_models"]
    assert folders.model_dirs("controlnet") == [models / "controlnet", models / "t2i_adapter"]
    for key in ("checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                "style_models", "embeddings", "vae_approx", "gligen", "upscale_models", "hypernetworks",
                "photomaker", "controlnet", "custom_nodes"):
        assert key in folders.folder_keys()
    with pytest.raises(KeyError, match="no_such_key"):
        folders.model_dirs("no_such_key")


def test_filenames_recursive_filtered_and_fresh(folders):
    ckpt = folders.base / "models" / "checkpoints"
    touch(ckpt / "b.safetensors")
    touch(ckpt / "sub" / "deep" / "a.ckpt")
    touch(ckpt / "notes.txt")
    touch(ckpt / ".hidden.safetensors")
    touch(folders.output_dir / "checkpoints" / "saved.safetensors")
    assert folders.filenames("checkpoints") == ["b.safetensors", "saved.safetensors", "sub/deep/a.ckpt"]
    # The cached listing must notice a file added deep inside, however soon it happens.
    touch(ckpt / "sub" / "deep" / "c.pt")
    assert "sub/deep/c.pt" in folders.filenames("checkpoints")
    (ckpt / "b.safetensors").unlink()
    assert "b.safetensors" not in folders.filenames("checkpoints")


def test_cached_listing_sees_additions_after_it_is_trusted(folders):
    loras = folders.base / "models" / "loras"
    touch(loras / "x" / "one.safetensors")
    old = 1_000_000_000  # make every directory look long untouched so the cache is trusted
    for d in (loras, loras / "x"):
        os.utime(d, (old, old))
    assert folders.filenames("loras") == ["x/one.safetensors"]
    assert folders.filenames("loras") == ["x/one.safetensors"]
    touch(loras / "x" / "two.safetensors")
    assert folders.filenames("loras") == ["x/one.safetensors", "x/two.safetensors"]
    (loras / "y").mkdir()
    touch(loras / "y" / "three.pt")
    assert "y/three.pt" in folders.filenames("loras")


def test_configs_only_yaml_and_classifiers_any(folders):
    touch(folders.base / "models" / "configs" / "v1.yaml")
    touch(folders.base / "models" / "configs" / "v1.safetensors")
    touch(folders.base / "models" / "classifiers" / "thing.onnx")
    assert folders.filenames("configs") == ["v1.yaml"]
    assert folders.filenames("classifiers") == ["thing.onnx"]


def test_diffusers_lists_model_folders(folders):
    touch(folders.base / "models" / "diffusers" / "sd15" / "model_index.json", b"{}")
    touch(folders.base / "models" / "diffusers" / "sd15" / "unet" / "w.safetensors")
    assert folders.filenames("diffusers") == ["sd15"]
    assert folders.full_path("diffusers", "sd15").is_dir()


def test_full_path_finds_listed_files_and_refuses_escapes(folders, tmp_path):
    vae = folders.base / "models" / "vae"
    target = touch(vae / "sub" / "v.safetensors")
    touch(tmp_path / "secret.safetensors")
    assert folders.full_path("vae", "sub/v.safetensors") == target
    assert folders.full_path("vae", "sub\\v.safetensors") == target  # names saved on Windows
    assert folders.full_path("vae", "missing.safetensors") is None
    for bad in ("../../../secret.safetensors", "sub/../../../../secret.safetensors",
                str(tmp_path / "secret.safetensors"), "..\\..\\..\\secret.safetensors", "v\x00.safetensors", ""):
        assert folders.full_path("vae", bad) is None, bad


def test_full_path_first_directory_wins(folders):
    first = touch(folders.base / "models" / "text_encoders" / "t5.safetensors", b"1")
    touch(folders.base / "models" / "clip" / "t5.safetensors", b"2")
    assert folders.full_path("clip", "t5.safetensors") == first
    assert folders.filenames("clip") == ["t5.safetensors"]


def test_safe_join_accepts_inside_paths(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert safe_join(root, "a", "b.png") == (root / "a" / "b.png").resolve()
    assert safe_join(root, "", "b.png") == (root / "b.png").resolve()
    assert safe_join(root, "a\\b.png") == (root / "a" / "b.png").resolve()
    assert safe_join(root, "./x/./y") == (root / "x" / "y").resolve()
    assert safe_join(root) == root.resolve()


@pytest.mark.parametrize("parts", [
    ("../x.png",), ("a/../../x.png",), ("..",), ("sub", ".."), ("/etc/passwd",), ("a", "/etc/passwd"),
    ("..\\..\\x.png",), ("C:\\Windows\\x.png",), ("c:x.png",), ("x\x00.png",), ("a/..\\..\\b",),
])
def test_safe_join_refuses_escapes(tmp_path, parts):
    with pytest.raises(UnsafePath) as info:
        safe_join(tmp_path, *parts)
    assert any(repr(p) in str(info.value) for p in parts)


def test_safe_join_refuses_symlink_pointing_outside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    touch(outside / "secret.txt")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "filelink.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(UnsafePath, match="link"):
        safe_join(root, "link", "secret.txt")
    with pytest.raises(UnsafePath, match="filelink"):
        safe_join(root, "filelink.txt")
    (root / "inner").mkdir()
    (root / "innerlink").symlink_to(root / "inner", target_is_directory=True)
    assert safe_join(root, "innerlink", "x.png") == (root / "inner" / "x.png").resolve()


def test_typed_dir(folders):
    assert folders.typed_dir("input") == folders.input_dir
    assert folders.typed_dir("output") == folders.output_dir
    assert folders.typed_dir("temp") == folders.temp_dir
    with pytest.raises(ValueError, match="models"):
        folders.typed_dir("models")


def test_annotated_path(folders):
    assert folders.annotated_path("x.png") == folders.input_dir / "x.png"
    assert folders.annotated_path("x.png [output]") == folders.output_dir / "x.png"
    assert folders.annotated_path("sub/x.png [temp]") == folders.temp_dir / "sub" / "x.png"
    assert folders.annotated_path("x.png [input]", default_type="output") == folders.input_dir / "x.png"
    assert folders.annotated_path("x.png", default_type="output") == folders.output_dir / "x.png"
    with pytest.raises(UnsafePath, match=r"\.\./"):
        folders.annotated_path("../x.png [output]")
    with pytest.raises(UnsafePath):
        folders.annotated_path("/etc/passwd")


def test_input_images(folders):
    touch(folders.input_dir / "b.png")
    touch(folders.input_dir / "sub" / "a.JPG")
    touch(folders.input_dir / "readme.txt")
    assert folders.input_images() == ["b.png", "sub/a.JPG"]
    touch(folders.input_dir / "c.webp")
    assert folders.input_images() == ["b.png", "c.webp", "sub/a.JPG"]


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_extra_model_paths_comfy_and_a1111_sections(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("LG_TEST_WEBUI", str(tmp_path / "webui"))
    config = write_yaml(tmp_path / "conf" / "extra_model_paths.yaml", """
a111:
    base_path: $LG_TEST_WEBUI
    checkpoints: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    embeddings: embeddings
    controlnet: models/ControlNet

comfyui:
    base_path: ../shared/comfy/
    is_default: true
    checkpoints: models/checkpoints/
    clip: models/clip/
    unet: |
        models/unet
        models/diffusion_models
    custom_nodes: custom_nodes/
""")
    folders.load_extra_model_paths(config)
    webui = (tmp_path / "webui").resolve()
    comfy = (tmp_path / "shared" / "comfy").resolve()
    models = folders.base / "models"
    assert folders.model_dirs("checkpoints") == [
        comfy / "models" / "checkpoints", models / "checkpoints", folders.output_dir / "checkpoints",
        webui / "models" / "Stable-diffusion"]
    assert folders.model_dirs("loras")[-2:] == [webui / "models" / "Lora", webui / "models" / "LyCORIS"]
    assert folders.model_dirs("embeddings")[-1] == webui / "embeddings"
    assert folders.model_dirs("text_encoders")[0] == comfy / "models" / "clip"
    assert folders.model_dirs("diffusion_models")[:2] == [comfy / "models" / "unet", comfy / "models" / "diffusion_models"]
    assert folders.custom_nodes_dirs == [comfy / "custom_nodes", folders.base / "custom_nodes"]
    touch(webui / "models" / "Lora" / "style.safetensors")
    assert "style.safetensors" in folders.filenames("loras")
    assert folders.full_path("loras", "style.safetensors") == webui / "models" / "Lora" / "style.safetensors"


def test_extra_model_paths_without_base_path_is_relative_to_the_yaml(folders, tmp_path):
    config = write_yaml(tmp_path / "conf" / "extra.yaml", "mine:\n  vae: ~/lg_home_vae\n  loras: my_loras\n")
    folders.load_extra_model_paths(config)
    assert folders.model_dirs("loras")[-1] == (tmp_path / "conf" / "my_loras").resolve()
    assert folders.model_dirs("vae")[-1] == (Path.home() / "lg_home_vae").resolve()


def test_extra_model_paths_unknown_key_becomes_a_folder(folders, tmp_path):
    config = write_yaml(tmp_path / "extra.yaml", "x:\n  base_path: stuff\n  ipadapter: models/ipadapter\n")
    folders.load_extra_model_paths(config)
    assert folders.model_dirs("ipadapter") == [(tmp_path / "stuff" / "models" / "ipadapter").resolve()]


@pytest.mark.parametrize("text", ["a: [unclosed\n", "- just\n- a list\n", "sec:\n  - not a mapping\n",
                                  "sec:\n  checkpoints: 42\n"])
def test_malformed_extra_model_paths_name_the_file(folders, tmp_path, text):
    config = write_yaml(tmp_path / "broken_paths.yaml", text)
    with pytest.raises(ValueError, match="broken_paths.yaml"):
        folders.load_extra_model_paths(config)


def test_missing_extra_model_paths_file(folders, tmp_path):
    with pytest.raises(ValueError, match="nope.yaml"):
        folders.load_extra_model_paths(tmp_path / "nope.yaml")


def test_runtime_start_empties_temp_but_keeps_outputs(tmp_path):
    from app.args import parse_args
    from app.runtime import create_runtime

    (tmp_path / "temp").mkdir()
    (tmp_path / "temp" / "old_preview.png").write_bytes(b"x")
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "kept.png").write_bytes(b"x")
    create_runtime(parse_args(["--base-directory", str(tmp_path), "--disable-all-custom-nodes"]), log=lambda m: None)
    assert list((tmp_path / "temp").iterdir()) == []
    assert (tmp_path / "output" / "kept.png").exists()
