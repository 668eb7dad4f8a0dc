"""ComfyUI's folder_paths module over the running engine's folders: every call answers as
ComfyUI's does (worked out by hand from ComfyUI's folder_paths.py), and what a plugin changes
through it is what the engine's own loaders and /object_info see."""
import os
from pathlib import Path

import pytest

import folder_paths


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def base(runtime, tmp_path):
    return tmp_path


def test_directories_are_the_engine_folders(base):
    assert folder_paths.base_path == str(base)
    assert folder_paths.models_dir == str(base / "models")
    assert folder_paths.get_output_directory() == folder_paths.output_directory == str(base / "output")
    assert folder_paths.get_input_directory() == str(base / "input")
    assert folder_paths.get_temp_directory() == str(base / "temp")
    assert folder_paths.get_user_directory() == str(base / "user")
    assert folder_paths.get_directory_by_type("output") == str(base / "output")
    assert folder_paths.get_directory_by_type("models") is None
    assert folder_paths.supported_pt_extensions == {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors",
                                                     ".pkl", ".sft"}


def test_set_output_directory_moves_where_the_engine_saves(runtime, base):
    elsewhere = base / "elsewhere"
    folder_paths.set_output_directory(str(elsewhere))
    assert folder_paths.get_output_directory() == str(elsewhere)
    assert runtime.env.folders.output_dir == elsewhere


def test_filename_list_full_path_and_legacy_names(base):
    ckpts = base / "models" / "checkpoints"
    touch(ckpts / "b.safetensors")
    touch(ckpts / "sub" / "a.ckpt")
    touch(ckpts / "notes.txt")
    touch(base / "models" / "clip" / "te.safetensors")
    assert folder_paths.get_filename_list("checkpoints") == ["b.safetensors", "sub/a.ckpt"]
    assert folder_paths.get_full_path("checkpoints", "sub/a.ckpt") == str(ckpts / "sub" / "a.ckpt")
    assert folder_paths.get_full_path("checkpoints", "missing.ckpt") is None
    assert folder_paths.get_full_path("no_such_folder", "x") is None
    with pytest.raises(FileNotFoundError, match="Model in folder 'checkpoints' with filename 'missing.ckpt' not found."):
        folder_paths.get_full_path_or_raise("checkpoints", "missing.ckpt")
    # "clip" and "unet" are ComfyUI's old names of text_encoders and diffusion_models
    assert folder_paths.get_filename_list("clip") == folder_paths.get_filename_list("text_encoders") == ["te.safetensors"]
    assert folder_paths.get_folder_paths("clip") == [str(base / "models" / "text_encoders"),
                                                     str(base / "models" / "clip"), str(base / "output" / "clip")]
    # a name that leads out of the folder is never found
    touch(base / "models" / "secret.safetensors")
    assert folder_paths.get_full_path("checkpoints", "../secret.safetensors") is None


def test_get_folder_paths_returns_a_copy(base):
    paths = folder_paths.get_folder_paths("loras")
    paths.append("/nowhere")
    assert "/nowhere" not in folder_paths.get_folder_paths("loras")


def test_add_model_folder_path_reaches_the_engine_loaders(runtime, base, tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    touch(shared / "shared.safetensors")
    folder_paths.add_model_folder_path("checkpoints", str(shared))
    assert folder_paths.get_folder_paths("checkpoints")[-1] == str(shared)
    assert "shared.safetensors" in folder_paths.get_filename_list("checkpoints")
    # the built-in loader's combo (and /object_info) list the plugin's folder too
    loader = runtime.registry.get("CheckpointLoaderSimple")
    assert "shared.safetensors" in loader.input_types()["required"]["ckpt_name"][0]
    # is_default moves an existing entry to the front
    folder_paths.add_model_folder_path("checkpoints", str(shared), is_default=True)
    assert folder_paths.get_folder_paths("checkpoints")[0] == str(shared)
    # an unknown key becomes a folder listing any file
    touch(shared / "x.weird")
    folder_paths.add_model_folder_path("my_models", str(shared))
    assert folder_paths.get_filename_list("my_models") == ["shared.safetensors", "x.weird"]


def test_folder_names_and_paths_is_live_both_ways(runtime, base, tmp_path_factory):
    gguf = tmp_path_factory.mktemp("gguf")
    touch(gguf / "m.gguf")
    touch(gguf / "readme.md")
    # a plugin defines a folder key of its own ...
    folder_paths.folder_names_and_paths["unet_gguf"] = ([str(gguf)], {".gguf"})
    assert folder_paths.get_filename_list("unet_gguf") == ["m.gguf"]
    paths, extensions = folder_paths.folder_names_and_paths["unet_gguf"]
    assert list(paths) == [str(gguf)] and set(extensions) == {".gguf"}
    # ... and extends an existing one in place, as packs do at import time
    folder_paths.folder_names_and_paths["diffusion_models"][1].add(".gguf")
    folder_paths.folder_names_and_paths["diffusion_models"][0].append(str(gguf))
    assert "m.gguf" in folder_paths.get_filename_list("unet")
    assert runtime.env.folders.model_dirs("diffusion_models")[-1] == gguf
    assert "checkpoints" in folder_paths.folder_names_and_paths and "nope" not in folder_paths.folder_names_and_paths
    assert "custom_nodes" in set(folder_paths.folder_names_and_paths)
    # empty extensions mean any file (ComfyUI's custom_nodes entry has set())
    folder_paths.folder_names_and_paths["anything"] = ([str(gguf)], set())
    assert folder_paths.get_filename_list("anything") == ["m.gguf", "readme.md"]


def test_annotated_filepaths(base):
    touch(base / "output" / "out.png")
    assert folder_paths.annotated_filepath("out.png [output]") == ("out.png", str(base / "output"))
    assert folder_paths.annotated_filepath("in.png") == ("in.png", None)
    assert folder_paths.get_annotated_filepath("out.png [output]") == str(base / "output" / "out.png")
    assert folder_paths.get_annotated_filepath("in.png") == str(base / "input" / "in.png")
    assert folder_paths.get_annotated_filepath("x.png", str(base / "temp")) == str(base / "temp" / "x.png")
    assert folder_paths.exists_annotated_filepath("out.png [output]")
    assert not folder_paths.exists_annotated_filepath("out.png")
    assert not folder_paths.exists_annotated_filepath("../../etc/passwd [output]")
    with pytest.raises(ValueError):
        folder_paths.get_annotated_filepath("../escape.png [input]")


def test_get_save_image_path_numbers_like_save_image(base):
    out = base / "output"
    touch(out / "shots" / "cat_00003_.png")
    touch(out / "shots" / "cat_00001_.png")
    touch(out / "shots" / "catdog_00009_.png")
    folder, stem, counter, subfolder, prefix = folder_paths.get_save_image_path("shots/cat", str(out), 64, 32)
    assert (folder, stem, counter, subfolder, prefix) == (str(out / "shots"), "cat", 4, "shots", "shots/cat")
    folder, stem, counter, subfolder, prefix = folder_paths.get_save_image_path("new/%width%x%height%", str(out), 64, 32)
    assert (stem, counter, subfolder, prefix) == ("64x32", 1, "new", "new/%width%x%height%".replace("%width%", "64")
                                                  .replace("%height%", "32"))
    assert os.path.isdir(folder)
    with pytest.raises(Exception, match="outside the output folder"):
        folder_paths.get_save_image_path("../../evil", str(out))


def test_filters_and_search(base):
    files = ["a.PNG", "b.safetensors", "c.mp4", "d.wav", "e"]
    assert folder_paths.filter_files_extensions(files, {".png", ".safetensors"}) == ["a.PNG", "b.safetensors"]
    assert folder_paths.filter_files_extensions(files, []) == sorted(files)
    assert folder_paths.filter_files_content_types(files, ["image"]) == ["a.PNG"]
    assert folder_paths.filter_files_content_types(files, ["video", "audio"]) == ["c.mp4", "d.wav"]
    root = base / "input"
    touch(root / "x" / "y" / "z.png")
    found, dirs = folder_paths.recursive_search(str(root))
    assert found == [os.path.join("x", "y", "z.png")]
    assert set(dirs) == {str(root), str(root / "x"), str(root / "x" / "y")}
    assert folder_paths.get_input_subfolders() == ["x", "x/y"]
    assert folder_paths.map_legacy("unet") == "diffusion_models"


def test_cache_helper_lists_once_inside_its_block(base):
    ckpts = base / "models" / "checkpoints"
    touch(ckpts / "one.safetensors")
    with folder_paths.cache_helper:
        assert folder_paths.get_filename_list("checkpoints") == ["one.safetensors"]
        touch(ckpts / "two.safetensors")
        assert folder_paths.get_filename_list("checkpoints") == ["one.safetensors"]
    assert folder_paths.get_filename_list("checkpoints") == ["one.safetensors", "two.safetensors"]
    names, dirs, _ = folder_paths.get_filename_list_("checkpoints")
    assert names == ["one.safetensors", "two.safetensors"] and str(ckpts) in dirs
