"""ComfyUI's `folder_paths` module for plugins, over the running engine's FolderPaths.

Everything reads and writes the folders of the runtime bound at start (app.compat): a model
folder a plugin adds through add_model_folder_path or folder_names_and_paths is one our loaders
and /object_info list too. Directory names are strings, as in ComfyUI. Unlike ComfyUI, names
that would lead out of their folder ("../x", absolute paths) are refused or not found.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import time
from collections.abc import Collection, MutableMapping, MutableSequence, MutableSet
from pathlib import Path
from typing import Iterable, Iterator, Literal

from app import compat
from app.folders import MODEL_EXTENSIONS, FolderPaths, UnsafePath, safe_join

log = logging.getLogger(__name__)

supported_pt_extensions: set[str] = set(MODEL_EXTENSIONS)

extension_mimetypes_cache: dict[str, str] = {"webp": "image", "fbx": "model"}

_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}


def _folders() -> FolderPaths:
    return compat.bound().env.folders


def map_legacy(folder_name: str) -> str:
    return _LEGACY.get(folder_name, folder_name)


# ---------------------------------------------------------------------------------------------
# folder_names_and_paths: {key: ([dir, ...], {".ext", ...})}, live over FolderPaths


class _Dirs(MutableSequence):
    """A folder key's directory list; edits (append, insert, remove...) change the engine's."""

    def __init__(self, key: str):
        self.key = key

    def _list(self) -> list[Path]:
        return _folders().folder(self.key).dirs

    def __getitem__(self, index):
        items = self._list()[index]
        return [str(p) for p in items] if isinstance(index, slice) else str(items)

    def __setitem__(self, index, value) -> None:
        dirs = self._list()
        dirs[index] = [_path(v) for v in value] if isinstance(index, slice) else _path(value)

    def __delitem__(self, index) -> None:
        del self._list()[index]

    def __len__(self) -> int:
        return len(self._list())

    def insert(self, index: int, value) -> None:
        self._list().insert(index, _path(value))

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, (list, tuple, _Dirs)) else NotImplemented

    def __repr__(self) -> str:
        return repr(list(self))


class _Extensions(MutableSet):
    """A folder key's extensions; empty means any file, as in ComfyUI."""

    def __init__(self, key: str):
        self.key = key

    def _set(self) -> set:
        folder = _folders().folder(self.key)
        if not isinstance(folder.extensions, set):  # None (any file) or "diffusers"
            return set()
        return folder.extensions

    def __contains__(self, ext) -> bool:
        return ext in self._set()

    def __iter__(self) -> Iterator[str]:
        return iter(set(self._set()))

    def __len__(self) -> int:
        return len(self._set())

    def add(self, ext: str) -> None:
        folder = _folders().folder(self.key)
        if not isinstance(folder.extensions, set):
            folder.extensions = set()
        folder.extensions.add(ext)

    def discard(self, ext: str) -> None:
        self._set().discard(ext)

    def __repr__(self) -> str:
        return repr(set(self))


class _FolderNamesAndPaths(MutableMapping):
    def __getitem__(self, key: str) -> tuple[_Dirs, _Extensions]:
        key = map_legacy(key)
        if key not in _folders().folder_keys():
            raise KeyError(key)
        return (_Dirs(key), _Extensions(key))

    def __setitem__(self, key: str, value) -> None:
        paths, extensions = value
        _folders().set_folder(map_legacy(key), [_path(p) for p in paths], set(extensions or ()))

    def __delitem__(self, key: str) -> None:
        raise TypeError("model folders cannot be removed from a running engine")

    def __iter__(self) -> Iterator[str]:
        return iter(_folders().folder_keys())

    def __len__(self) -> int:
        return len(_folders().folder_keys())


folder_names_and_paths: MutableMapping = _FolderNamesAndPaths()


def _path(value) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(os.fspath(value)))).resolve()


# ---------------------------------------------------------------------------------------------
# base, models, input/output/temp/user


_LIVE = {
    "base_path": lambda: str(_folders().base),
    "models_dir": lambda: str(_folders().base / "models"),
    "output_directory": lambda: str(_folders().output_dir),
    "temp_directory": lambda: str(_folders().temp_dir),
    "input_directory": lambda: str(_folders().input_dir),
    "user_directory": lambda: str(_folders().user_dir),
}


def __getattr__(name: str):
    if name in _LIVE:
        return _LIVE[name]()
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r}")


def get_output_directory() -> str:
    return str(_folders().output_dir)


def get_temp_directory() -> str:
    return str(_folders().temp_dir)


def get_input_directory() -> str:
    return str(_folders().input_dir)


def get_user_directory() -> str:
    return str(_folders().user_dir)


def set_output_directory(output_dir: str) -> None:
    _folders().output_dir = _path(output_dir)


def set_temp_directory(temp_dir: str) -> None:
    _folders().temp_dir = _path(temp_dir)


def set_input_directory(input_dir: str) -> None:
    _folders().input_dir = _path(input_dir)


def set_user_directory(user_dir: str) -> None:
    _folders().user_dir = _path(user_dir)


def get_directory_by_type(type_name: str) -> str | None:
    try:
        return str(_folders().typed_dir(type_name))
    except ValueError:
        return None


def get_input_subfolders() -> list[str]:
    """Every folder under input/, relative and "/"-separated, sorted."""
    root = _folders().input_dir
    if not root.is_dir():
        return []
    found = []
    for dirpath, _dirs, _files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# "name [output]" annotations


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """("x.png", output dir) for "x.png [output]"; (name, None) without an annotation."""
    for kind in ("output", "input", "temp"):
        suffix = f"[{kind}]"
        if name.endswith(suffix):
            return name[:-len(suffix)].rstrip(), get_directory_by_type(kind)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """The file a (possibly annotated) name refers to, in input/ unless annotated or default_dir.
    A name leading out of its folder raises UnsafePath (a ValueError)."""
    name, base = annotated_filepath(name)
    base = base or default_dir or get_input_directory()
    return str(safe_join(Path(base), name))


def exists_annotated_filepath(name: str) -> bool:
    try:
        return os.path.exists(get_annotated_filepath(name))
    except UnsafePath:
        return False


def filter_files_content_types(files: Iterable[str],
                               content_types: list[Literal["image", "video", "audio", "model"]]) -> list[str]:
    """The files whose MIME type's major part ("image", "video", ...) is one of content_types."""
    result = []
    for file in files:
        extension = file.split(".")[-1]
        kind = extension_mimetypes_cache.get(extension)
        if kind is None:
            mime, _ = mimetypes.guess_type(file, strict=False)
            if not mime:
                continue
            kind = extension_mimetypes_cache[extension] = mime.split("/")[0]
        if kind in content_types:
            result.append(file)
    return result


# ---------------------------------------------------------------------------------------------
# model folders


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Add a directory to a folder key (first when is_default); an unknown key becomes a folder
    listing any file."""
    _folders().add_model_dir(map_legacy(folder_name), full_folder_path, is_default)


def get_folder_paths(folder_name: str) -> list[str]:
    return [str(p) for p in _folders().model_dirs(map_legacy(folder_name))]


def recursive_search(directory: str, excluded_dir_names: list[str] | None = None) -> tuple[list[str], dict[str, float]]:
    """(relative paths of every file under directory, {directory: mtime} of every folder walked)."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files: list[str] = []
    dirs = {directory: os.path.getmtime(directory)}
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        files.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames)
        for d in subdirs:
            path = os.path.join(dirpath, d)
            try:
                dirs[path] = os.path.getmtime(path)
            except OSError:
                log.warning("cannot read %s; skipped", path)
    return files, dirs


def filter_files_extensions(files: Collection[str], extensions: Collection[str]) -> list[str]:
    """The files with one of the extensions (any, when extensions is empty), sorted."""
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in _folders().folder_keys():
        return None
    path = _folders().full_path(folder_name, filename)
    return None if path is None else str(path)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_filename_list(folder_name: str) -> list[str]:
    """Files of a folder key, relative and "/"-separated, sorted (cached until a folder changes)."""
    folder_name = map_legacy(folder_name)
    cached = cache_helper.get(folder_name)
    if cached is not None:
        return list(cached[0])
    names = _folders().filenames(folder_name)
    cache_helper.set(folder_name, (names, {}, time.perf_counter()))
    return names


def get_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float]:
    """(files, {dir: mtime}, time): the listing read afresh from disk."""
    names: set[str] = set()
    mtimes: dict[str, float] = {}
    folder = _folders().folder(map_legacy(folder_name))
    extensions = folder.extensions if isinstance(folder.extensions, set) else set()
    for d in folder.dirs:
        files, dirs = recursive_search(str(d), excluded_dir_names=[".git"])
        names.update(filter_files_extensions(files, extensions))
        mtimes.update(dirs)
    return sorted(names), mtimes, time.perf_counter()


def cached_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float] | None:
    """The listing if held by cache_helper; our folders keep their own, always current, cache."""
    return cache_helper.get(map_legacy(folder_name))


class CacheHelper:
    """Inside `with cache_helper:` a folder is listed once, however often it is asked for."""

    def __init__(self):
        self.cache: dict[str, tuple[list[str], dict[str, float], float]] = {}
        self.active = False

    def get(self, key: str, default=None):
        return self.cache.get(key, default) if self.active else default

    def set(self, key: str, value) -> None:
        if self.active:
            self.cache[key] = value

    def clear(self) -> None:
        self.cache.clear()

    def __enter__(self) -> "CacheHelper":
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False
        self.clear()


cache_helper = CacheHelper()


# ---------------------------------------------------------------------------------------------
# saving


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """(folder, file name stem, next counter, subfolder, expanded prefix) for numbered saves, as
    SaveImage numbers them ("<stem>_<counter:05>_.png"); a prefix leading out of output_dir raises."""
    from nodes.image import expand_prefix, save_target
    from datetime import datetime

    now = datetime.now()
    target = save_target(Path(output_dir), filename_prefix, image_width, image_height, now)
    target.folder.mkdir(parents=True, exist_ok=True)
    return (str(target.folder), target.stem, target.counter, target.subfolder,
            expand_prefix(filename_prefix, image_width, image_height, now))
