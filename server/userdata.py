"""The user directory: users, each user's files (workflows, settings, templates), safely.

ComfyUI keeps each user's files in `<user_dir>/<user id>/`: `comfy.settings.json`, `workflows/`,
`subgraphs/`, ... With --multi-user the user comes from the `Comfy-User` request header and must
be one of `<user_dir>/users.json`; without it everyone is `default`. Names come from the network,
so every path is resolved strictly inside the user's own folder (server.files.resolve_inside:
no '..', no absolute paths, no symlinks leading out), and one user never reaches another's files.
Writes go through a temporary file, fsync and an atomic rename: a crash leaves the old file or
the new one, never half of one.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote

from server.files import PathRefused, resolve_inside
from server.jsonio import BadRequest

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
USERS_FILE = "users.json"
SETTINGS_FILE = "comfy.settings.json"
USER_HEADER = "Comfy-User"
_TEMP_PREFIX = ".lg-write-"
# ids ComfyUI makes: the name with other characters as '-', then '_' and a uuid
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
MAX_USERNAME = 100


class UserError(BadRequest):
    """A request for a user or a file that cannot be served; answered as a JSON error."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write `data` to `path` durably and atomically.

    Without `overwrite` an existing name is never replaced (FileExistsError), even by a racing
    writer: the finished file is linked into place, which fails if the name exists.
    """
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=_TEMP_PREFIX, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)  # replaces a symlink itself, never writes through it
        else:
            os.link(tmp, path)
        _fsync_dir(folder)
    finally:
        tmp.unlink(missing_ok=True)


def _make_parent(path: Path, name: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file where a folder of the name should be
        raise UserError(400, "invalid_path", f"cannot create the folder for {name!r}: {exc.strerror or exc}") from None


def file_info(path: Path, relative_to: Path) -> dict[str, Any]:
    """ComfyUI's FileInfo: path relative to the listed folder, size, modified and created (s)."""
    st = path.stat()
    return {"path": path.relative_to(relative_to).as_posix(), "size": st.st_size,
            "modified": st.st_mtime, "created": st.st_ctime}


class UserStore:
    """The users and their folders under one user directory."""

    def __init__(self, user_dir: Path, multi_user: bool = False):
        self.user_dir = Path(user_dir)
        self.multi_user = multi_user
        self._lock = threading.Lock()
        self.users: dict[str, str] = self._load_users() if multi_user else {DEFAULT_USER: DEFAULT_USER}

    # -- users -----------------------------------------------------------------------------
    def _users_path(self) -> Path:
        return self.user_dir / USERS_FILE

    def _load_users(self) -> dict[str, str]:
        path = self._users_path()
        if not path.is_file():
            return {}
        try:
            users = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s); starting with no users", path, exc)
            return {}
        if not isinstance(users, dict):
            log.error("%s is not a JSON object of user id -> name; starting with no users", path)
            return {}
        good = {str(k): str(v) for k, v in users.items() if isinstance(k, str) and _USER_ID.match(k)}
        for bad in set(users) - set(good):
            log.warning("ignoring user id %r in %s: ids are letters, digits, '-' and '_'", bad, path)
        return good

    def add_user(self, name: Any) -> str:
        """A new user's id (name with odd characters as '-', then '_' and a uuid)."""
        if not isinstance(name, str) or not name.strip():
            raise UserError(400, "invalid_request", "'username' must be a non-empty string")
        name = name.strip()
        if len(name) > MAX_USERNAME:
            raise UserError(400, "invalid_request", f"'username' is longer than {MAX_USERNAME} characters")
        with self._lock:
            if name in self.users.values():
                raise UserError(400, "duplicate_user", "Duplicate username.")
            user_id = re.sub(r"[^a-zA-Z0-9-_]+", "-", name) + "_" + str(uuid.uuid4())
            users = {**self.users, user_id: name}
            write_atomic(self._users_path(), json.dumps(users).encode())
            self.users = users
        return user_id

    def user_of(self, headers) -> str:
        """The request's user id: `Comfy-User` with --multi-user, else the default user."""
        user = DEFAULT_USER
        if self.multi_user:
            user = headers.get(USER_HEADER) or DEFAULT_USER
        if user not in self.users:
            if self.multi_user:
                raise UserError(403, "unknown_user", f"Unknown user {user!r}: pick a user first (POST /users creates "
                                                     "one; the frontend sends its id in the Comfy-User header)")
            raise UserError(403, "unknown_user", f"Unknown user {user!r}")
        return user

    def root(self, user: str) -> Path:
        """The user's folder (not created). Ids are checked when loaded, so it stays inside."""
        if not _USER_ID.match(user):
            raise UserError(403, "unknown_user", f"Unknown user {user!r}")
        return self.user_dir.resolve() / user

    def exists(self, user: str) -> bool:
        return self.root(user).is_dir()

    # -- paths -----------------------------------------------------------------------------
    def path(self, user: str, name: str, what: str = "file") -> Path:
        """The user's file or folder `name` (a relative path with '/'), resolved inside the user's
        folder; UserError 400 for a malformed name, 403 for one that leads outside."""
        if not name:
            raise UserError(400, "invalid_path", f"no {what} name given")
        if "%" in name:
            name = unquote(name)  # clients that encode twice, as ComfyUI accepts
        try:
            return resolve_inside(self.root(user), name)
        except PathRefused as exc:
            message = exc.message.replace("subfolder", what)
            raise UserError(exc.status, "forbidden_path" if exc.status == 403 else "invalid_path",
                            f"{message}: {name!r}") from None

    def relative(self, user: str, path: Path) -> str:
        return path.relative_to(self.root(user)).as_posix()

    def _inside(self, user: str, path: Path) -> bool:
        """For listings: a symlink found while walking must not lead out of the user's folder."""
        try:
            return path.resolve().is_relative_to(self.root(user))
        except OSError:
            return False

    # -- files -----------------------------------------------------------------------------
    def read(self, user: str, name: str) -> Path:
        path = self.path(user, name)
        if not path.is_file():
            raise UserError(404, "not_found", f"no file {name!r} in the user's data"
                            + (" (it is a folder)" if path.is_dir() else ""))
        return path

    def write(self, user: str, name: str, data: bytes, overwrite: bool = True) -> Path:
        path = self.path(user, name)
        if path == self.root(user) or path.is_dir():
            raise UserError(400, "invalid_path", f"{name!r} is a folder, not a file")
        _make_parent(path, name)
        try:
            write_atomic(path, data, overwrite)
        except FileExistsError:
            raise UserError(409, "file_exists", f"File already exists: {name!r} (pass overwrite=true to replace "
                                                "it)") from None
        except OSError as exc:
            raise UserError(400, "invalid_path", f"cannot write {name!r}: {exc.strerror or exc}") from None
        return path

    def delete(self, user: str, name: str) -> None:
        path = self.read(user, name)
        path.unlink()
        _fsync_dir(path.parent)

    def move(self, user: str, source: str, dest: str, overwrite: bool) -> Path:
        src = self.path(user, source)
        if not src.exists() or src == self.root(user):
            raise UserError(404, "not_found", f"no file {source!r} in the user's data")
        target = self.path(user, dest, "destination")
        if target == self.root(user) or target == src:
            raise UserError(400, "invalid_path", f"cannot move {source!r} onto {dest!r}")
        if src.is_dir() and target.is_relative_to(src):
            raise UserError(400, "invalid_path", f"cannot move folder {source!r} into itself")
        if target.is_dir():
            raise UserError(409, "file_exists", f"{dest!r} is an existing folder")
        _make_parent(target, dest)
        try:
            if overwrite and src.is_file():
                os.replace(src, target)
            elif src.is_file():
                os.link(src, target)  # fails if the name exists, even when a racer just took it
                src.unlink()
            elif target.exists():
                raise FileExistsError
            else:
                os.rename(src, target)
        except FileExistsError:
            raise UserError(409, "file_exists", f"File already exists: {dest!r} (pass overwrite=true to replace "
                                                "it)") from None
        except OSError as exc:
            raise UserError(400, "invalid_path", f"cannot move {source!r} to {dest!r}: {exc.strerror or exc}") from None
        _fsync_dir(target.parent)
        _fsync_dir(src.parent)
        return target

    # -- listings --------------------------------------------------------------------------
    def _walk(self, user: str, folder: Path, recurse: bool, hidden: bool) -> Iterator[tuple[Path, bool]]:
        """(path, is_dir) under folder in name order, never through links that lead outside."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(_TEMP_PREFIX) or (not hidden and entry.name.startswith(".")):
                continue
            path = Path(entry.path)
            if entry.is_symlink() and not self._inside(user, path):
                continue
            is_dir = entry.is_dir()
            yield path, is_dir
            if is_dir and recurse and not entry.is_symlink():
                yield from self._walk(user, path, recurse, hidden)

    def list_files(self, user: str, directory: str, recurse: bool, full_info: bool, split: bool) -> list:
        """GET /userdata?dir=: files (not folders) under directory, in ComfyUI's three shapes."""
        folder = self.path(user, directory, "directory")
        if not folder.is_dir():
            raise UserError(404, "not_found", f"Directory not found: {directory!r}")
        out: list = []
        for path, is_dir in self._walk(user, folder, recurse, hidden=False):  # glob's rule: no dotfiles
            if is_dir:
                continue
            if full_info:
                out.append(file_info(path, folder))
                continue
            rel = path.relative_to(folder).as_posix()
            out.append([rel, *rel.split("/")] if split else rel)
        return out

    def list_tree(self, user: str, rel: str) -> list[dict]:
        """GET /v2/userdata?path=: every folder and file below, folders first, then by name."""
        base = self.root(user)
        folder = self.path(user, rel, "path") if rel else base
        if not folder.exists():
            if folder == base:
                return []  # a user who has saved nothing yet
            raise UserError(404, "not_found", f"Requested path not found: {rel!r}")
        if not folder.is_dir():
            raise UserError(400, "invalid_path", f"Requested path is not a directory: {rel!r}")
        out = []
        for path, is_dir in self._walk(user, folder, recurse=True, hidden=True):
            entry: dict[str, Any] = {"name": path.name, "path": path.relative_to(base).as_posix(),
                                     "type": "directory" if is_dir else "file"}
            if not is_dir:
                try:
                    st = path.stat()
                    entry["size"], entry["modified"] = st.st_size, st.st_mtime
                except OSError:
                    pass
            out.append(entry)
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return out

    # -- settings --------------------------------------------------------------------------
    def settings(self, user: str) -> dict:
        path = self.path(user, SETTINGS_FILE)
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("the settings file %s is unreadable (%s); using no settings", path, exc)
            return {}
        return value if isinstance(value, dict) else {}

    def update_settings(self, user: str, changes: dict) -> None:
        """Merge `changes` into the user's settings; one writer at a time, so concurrent posts of
        different settings (the frontend sends many at once) all land."""
        with self._lock:
            merged = {**self.settings(user), **changes}
            write_atomic(self.root(user) / SETTINGS_FILE, json.dumps(merged, indent=4).encode())
