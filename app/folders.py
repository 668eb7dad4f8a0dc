"""Where models, inputs, outputs and plugins live, and safe access to files inside those places.

One FolderPaths object per engine (handed to nodes through the environment), never module-level
state, so tests and several engines in one process each get their own folders.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import yaml

MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
TYPED_DIRS = ("input", "output", "temp")
LOCK_NAME = "latentgraph.db.lock"  # beside the server's queue database in the user folder

log = logging.getLogger(__name__)

# key -> (dirs under models/, subdirs of output/ that also hold such files, extensions)
# None as extensions means any file; "diffusers" lists model folders instead of files.
_DEFAULTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], frozenset | None | str]] = {
    "checkpoints": (("checkpoints",), ("checkpoints",), frozenset(MODEL_EXTENSIONS)),
    "configs": (("configs",), (), frozenset({".yaml"})),
    "loras": (("loras",), ("loras",), frozenset(MODEL_EXTENSIONS)),
    "vae": (("vae",), ("vae",), frozenset(MODEL_EXTENSIONS)),
    "text_encoders": (("text_encoders", "clip"), ("clip",), frozenset(MODEL_EXTENSIONS)),
    "diffusion_models": (("unet", "diffusion_models"), ("diffusion_models",), frozenset(MODEL_EXTENSIONS)),
    **{key: ((key,), (), frozenset(MODEL_EXTENSIONS)) for key in (
        "clip_vision", "style_models", "embeddings", "vae_approx", "gligen", "upscale_models",
        "hypernetworks", "photomaker", "model_patches", "audio_encoders")},
    "controlnet": (("controlnet", "t2i_adapter"), (), frozenset(MODEL_EXTENSIONS)),
    "diffusers": (("diffusers",), (), "diffusers"),
    "classifiers": (("classifiers",), (), None),
}
# The project's own model (models_builtin/README.md): listed after the user's checkpoints so a
# fresh install can make a picture; nothing is ever written there.
BUILTIN_MODELS_DIR = Path(__file__).resolve().parent.parent / "models_builtin"
# "0" leaves the built-in model out of the checkpoint list (the test suite, whose other tests
# expect the lists of their own folders only); anything else or unset lists it.
BUILTIN_MODELS_ENV = "LATENTGRAPH_BUILTIN_MODELS"


def builtin_models_listed() -> bool:
    return os.environ.get(BUILTIN_MODELS_ENV, "1") != "0"
ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
# A directory modified this close to a scan may have changed within the filesystem's mtime
# granularity without its mtime moving, so such a listing is not trusted from the cache.
_RACY_NS = 2_000_000_000
_ANNOTATION = re.compile(r"^(.*?)\s*\[(input|output|temp)\]\s*$")
_DRIVE = re.compile(r"^[A-Za-z]:")
# The folder keys listed inside FolderPaths.recording() blocks of this thread / task.
_LISTED: ContextVar[list[str] | None] = ContextVar("listed_folders", default=None)


class FoldersBusy(RuntimeError):
    """Another LatentGraph process holds these folders."""


def hold_lock(path: Path) -> BinaryIO:
    """An exclusive OS lock on path, held while the returned file stays open (the OS releases it
    when the process dies, however it dies); FoldersBusy when another process holds it.

    Two servers sharing one queue would each think the other's running prompt was left over
    from a crash and run it again, and each would empty the other's temp/.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no protection
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise FoldersBusy(f"another LatentGraph server or run is using {path.parent} (found a lock on "
                          f"{path.name}); stop it or give this one a different --user-directory") from None
    return handle


class UnsafePath(ValueError):
    """A user-supplied name would reach outside the folder it is meant for."""


def _clean_parts(parts: Iterable[str]) -> list[str]:
    """Split names into path components, refusing anything that could escape lexically.

    Backslashes count as separators, so Windows-style names ("sd15\\model.ckpt") work and
    "..\\x" is caught as a parent reference rather than passing as one odd file name.
    """
    out: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise UnsafePath(f"path component {part!r} is not a string")
        if "\x00" in part:
            raise UnsafePath(f"path {part!r} contains a NUL byte")
        text = part.replace("\\", "/")
        if text.startswith("/") or _DRIVE.match(text):
            raise UnsafePath(f"path {part!r} is absolute")
        for comp in text.split("/"):
            if comp == "..":
                raise UnsafePath(f"path {part!r} refers to a parent directory")
            if comp and comp != ".":
                out.append(comp)
    return out


def safe_join(root: Path, *parts: str) -> Path:
    """root/parts resolved, refusing results outside root (including through symlinks)."""
    root = Path(root).resolve()
    target = root.joinpath(*_clean_parts(parts)).resolve()
    if target != root and not target.is_relative_to(root):
        raise UnsafePath(f"path {'/'.join(parts)!r} leads outside {root}")
    return target


@dataclass
class Folder:
    """One folder key: its directories (first = default) and the file extensions it lists
    (None or empty: any file; "diffusers": model folders)."""

    dirs: list[Path]
    extensions: set | None | str


@dataclass
class _Listing:
    dirs: tuple[Path, ...]
    extensions: frozenset | None | str
    mtimes: dict[str, int | None]
    scanned_at: int
    names: list[str]


class FolderPaths:
    """The engine's folders: model folders by key, input/output/temp/user, custom node dirs."""

    def __init__(self, base_directory, output_directory=None, input_directory=None,
                 temp_directory=None, user_directory=None, create: bool = True, builtin_models: bool = False):
        self.base = Path(base_directory).expanduser().resolve()
        self.output_dir = _abs(output_directory) if output_directory else self.base / "output"
        self.input_dir = _abs(input_directory) if input_directory else self.base / "input"
        # ComfyUI appends /temp to --temp-directory; keeping that means the folder we wipe is
        # always one we own, even when a user points the flag at /tmp.
        self.temp_dir = _abs(temp_directory) / "temp" if temp_directory else self.base / "temp"
        self.user_dir = _abs(user_directory) if user_directory else self.base / "user"
        self._folders: dict[str, Folder] = {}
        models = self.base / "models"
        for key, (model_subdirs, output_subdirs, extensions) in _DEFAULTS.items():
            dirs = [models / d for d in model_subdirs] + [self.output_dir / d for d in output_subdirs]
            self._folders[key] = Folder(dirs, set(extensions) if isinstance(extensions, frozenset) else extensions)
        if builtin_models:
            self._folders["checkpoints"].dirs.append(BUILTIN_MODELS_DIR)
        self._folders["custom_nodes"] = Folder([self.base / "custom_nodes"], {".py"})
        self._listings: dict[str, _Listing] = {}
        self.lock: BinaryIO | None = None  # held by claim()
        if create:
            for key, (model_subdirs, _, _) in _DEFAULTS.items():
                for d in model_subdirs:
                    (models / d).mkdir(parents=True, exist_ok=True)
            for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir, self.base / "custom_nodes"):
                d.mkdir(parents=True, exist_ok=True)

    def claim(self, exclusive: bool) -> bool:
        """Take this user folder's lock for the life of the process, then empty temp/.

        The lock comes before anything is removed, so a second server on the same folders stops
        (FoldersBusy) without touching the running one's files. Not `exclusive` (the command
        line): when another process holds the lock, temp/ is left alone and False returned.
        """
        if self.lock is None:
            try:
                self.lock = hold_lock(self.user_dir / LOCK_NAME)
            except FoldersBusy:
                if exclusive:
                    raise
                return False
        self.clear_temp()
        return True

    def clear_temp(self) -> None:
        """Empty temp/ (previews of a past session), as ComfyUI does at start and exit."""
        if not self.temp_dir.is_dir():
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            return
        for entry in self.temp_dir.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError as exc:
                log.warning("cannot remove %s from the temp folder: %s", entry, exc)

    # -- keys and directories --------------------------------------------------------------
    @property
    def custom_nodes_dirs(self) -> list[Path]:
        return self._folders["custom_nodes"].dirs

    def folder(self, key: str) -> Folder:
        """The live entry of a folder key; changing its dirs or extensions changes the listings."""
        folder = self._folders.get(ALIASES.get(key, key))
        if folder is None:
            raise KeyError(f"unknown model folder {key!r}; known folders: {', '.join(self.folder_keys())}")
        return folder

    def set_folder(self, key: str, dirs: Iterable, extensions: Iterable[str] | None) -> None:
        """Define (or redefine) a folder key, as plugins do through folder_paths."""
        exts = set(extensions) if extensions is not None and not isinstance(extensions, str) else extensions
        self._folders[ALIASES.get(key, key)] = Folder([_abs(d) for d in dirs], exts)

    def folder_keys(self) -> list[str]:
        return list(self._folders)

    def model_dirs(self, key: str) -> list[Path]:
        return list(self.folder(key).dirs)

    def add_model_dir(self, key: str, path, is_default: bool = False, extensions: Iterable[str] | None = None) -> None:
        """Add a directory to a folder key; an unknown key becomes a new folder listing any file.

        `is_default` puts it first, where downloads and saves go.
        """
        key = ALIASES.get(key, key)
        folder = self._folders.get(key)
        if folder is None:
            folder = self._folders[key] = Folder([], set(extensions) if extensions else None)
        path = _abs(path)
        if path in folder.dirs:
            if not is_default:
                return
            folder.dirs.remove(path)
        folder.dirs.insert(0, path) if is_default else folder.dirs.append(path)

    # -- listings --------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self):
        """Yields a list that collects the folder keys listed in the block (e.g. by a node's
        INPUT_TYPES), so an empty choice list can name the folder it came from."""
        keys: list[str] = []
        token = _LISTED.set(keys)
        try:
            yield keys
        finally:
            _LISTED.reset(token)

    def filenames(self, key: str) -> list[str]:
        """Files of a folder key as sorted relative posix paths, searched recursively."""
        folder = self.folder(key)
        key = ALIASES.get(key, key)
        if _LISTED.get() is not None and key not in _LISTED.get():
            _LISTED.get().append(key)
        listing = self._listings.get(key)
        if listing is None or not _still_valid(listing, folder.dirs, folder.extensions):
            listing = _scan(folder.dirs, folder.extensions)
            self._listings[key] = listing
        return list(listing.names)

    def full_path(self, key: str, name: str) -> Path | None:
        """The file a listed name refers to (first folder wins), or None.

        Only lexical escapes are refused here: symlinks that an owner put inside a model folder
        (to a shared model store on another disk) are honoured, as listing follows them too.
        """
        try:
            parts = _clean_parts([name])
        except UnsafePath:
            return None
        if not parts:
            return None
        folder = self.folder(key)
        for d in folder.dirs:
            candidate = d.joinpath(*parts)
            if candidate.is_file() or (folder.extensions == "diffusers" and candidate.is_dir()):
                return candidate
        return None

    def input_images(self) -> list[str]:
        listing = self._listings.get("\0input")
        if listing is None or not _still_valid(listing, [self.input_dir], IMAGE_EXTENSIONS):
            listing = _scan([self.input_dir], frozenset(IMAGE_EXTENSIONS))
            self._listings["\0input"] = listing
        return list(listing.names)

    # -- input/output/temp -----------------------------------------------------------------
    def typed_dir(self, type_name: str) -> Path:
        dirs = {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}
        if type_name not in dirs:
            raise ValueError(f"unknown folder type {type_name!r}; expected one of {', '.join(TYPED_DIRS)}")
        return dirs[type_name]

    def annotated_path(self, name: str, default_type: str = "input") -> Path:
        """Resolve "x.png [output]"-style names; without a suffix the default folder is used."""
        match = _ANNOTATION.match(name)
        if match:
            name, default_type = match.group(1), match.group(2)
        return safe_join(self.typed_dir(default_type), name)

    # -- extra_model_paths.yaml ------------------------------------------------------------
    def load_extra_model_paths(self, yaml_path) -> None:
        yaml_path = _abs(yaml_path)
        try:
            doc = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{yaml_path}: cannot read extra model paths: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"{yaml_path}: invalid YAML: {exc}") from exc
        if doc is None:
            return
        if not isinstance(doc, dict):
            raise ValueError(f"{yaml_path}: expected named sections at the top level, got {type(doc).__name__}")
        for section, entries in doc.items():
            if entries is None:
                continue
            if not isinstance(entries, dict):
                raise ValueError(f"{yaml_path}: section {section!r} must map folder names to paths")
            self._load_section(yaml_path, section, entries)

    def _load_section(self, yaml_path: Path, section: str, entries: dict) -> None:
        base = yaml_path.parent
        if entries.get("base_path"):
            base = base / os.path.expandvars(os.path.expanduser(str(entries["base_path"])))
        is_default = entries.get("is_default") is True
        for key, value in entries.items():
            if key in ("base_path", "is_default") or value is None:
                continue
            if isinstance(value, str):
                paths = [line.strip() for line in value.splitlines() if line.strip()]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                paths = [v.strip() for v in value if v.strip()]
            else:
                raise ValueError(f"{yaml_path}: {section}.{key} must be a path or a block of paths, got {value!r}")
            # Prepending one at a time would reverse a block; insert in reverse to keep its order.
            for p in reversed(paths) if is_default else paths:
                self.add_model_dir(str(key), base / os.path.expandvars(os.path.expanduser(p)), is_default)


def _abs(path) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(path)))).resolve()


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _frozen(extensions: set | None | str) -> frozenset | None | str:
    return frozenset(extensions) if isinstance(extensions, (set, frozenset)) else extensions


def _still_valid(listing: _Listing, dirs: list[Path], extensions: set | None | str) -> bool:
    if listing.dirs != tuple(dirs) or listing.extensions != _frozen(extensions):
        return False
    newest = 0
    for d, recorded in listing.mtimes.items():
        now = _mtime(d)
        if now != recorded:
            return False
        newest = max(newest, now or 0)
    return newest < listing.scanned_at - _RACY_NS


def _scan(dirs: list[Path], extensions: set | frozenset | None | str) -> _Listing:
    scanned_at = time.time_ns()
    mtimes: dict[str, int | None] = {}
    names: set[str] = set()
    for root in dirs:
        mtimes[str(root)] = _mtime(str(root))
        seen: set[str] = set()  # real paths walked, so symlink loops end
        for dirpath, dirnames, files in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            mtimes[dirpath] = _mtime(dirpath)
            rel_dir = Path(os.path.relpath(dirpath, root))
            if extensions == "diffusers":
                if "model_index.json" in files and dirpath != str(root):
                    names.add(rel_dir.as_posix())
                    dirnames[:] = []
                    continue
            else:
                for f in files:
                    if f.startswith("."):
                        continue
                    if not extensions or os.path.splitext(f)[1].lower() in extensions:
                        names.add((rel_dir / f).as_posix())
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return _Listing(tuple(dirs), _frozen(extensions), mtimes, scanned_at, sorted(names))
