"""Prompt emphasis syntax, textual-inversion embeddings and 77-token chunking, as ComfyUI does them.

The rules follow ComfyUI's CLIPTextEncode (not A1111's parser), so a workflow written for ComfyUI
gives the same token weights here:

* ``(text)`` multiplies the weight of ``text`` by 1.1; nested groups multiply again, so
  ``((text))`` is 1.21.
* ``(text:w)`` *sets* the weight to ``w``; it does not multiply by the enclosing weight. Hence
  ``((text:1.5))`` is 1.5, while ``((text):1.5)`` is 1.65 (the inner group still multiplies the
  1.5 by 1.1). A weight that does not parse as a float leaves ``:junk`` in the text and the
  group at x1.1. The colon is the last one in the group, and one at the very start does not count.
* Square brackets mean nothing in ComfyUI: ``[text]`` is tokenized with its brackets at the
  current weight. A1111's "[text] = /1.1" rule is deliberately not applied.
* ``\\(`` and ``\\)`` are literal parentheses. ComfyUI has no other escapes, so ``\\[`` and ``\\]``
  reach the tokenizer unchanged, backslash included (CLIP tokenizes the backslash as its own token).
* Unmatched brackets are not errors: a stray ``)`` and everything after it up to where the depth
  returns to zero stays literal text; an unclosed ``(`` is literal too.
* ``embedding:name`` (at the start of a weighted segment or after whitespace) inserts the
  vectors of a textual-inversion embedding file in place of tokens, carrying the segment's weight.
  Text after the name in the same whitespace-separated word (from a ``<`` or ``[``, or trailing
  commas) is tokenized as ordinary text. A name that cannot be found is dropped with a warning.

Chunking: each weighted segment (and each embedding) is a group of tokens. Groups go into windows
of 75 tokens between a start and an end token, padded to 77. A group shorter than 8 tokens that
does not fit is moved whole into the next window; a longer one is split at the window edge.
"""
from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Union

import torch

log = logging.getLogger(__name__)

Token = Union[int, torch.Tensor]
"""A vocabulary id, or a 1-D embedding vector that takes a token's place."""
Chunk = list[tuple[Token, float]]
EmbeddingResolver = Callable[[str], Union[Path, str, None]]
"""Maps a relative file name (as written after ``embedding:``, with or without extension) to a file."""

EMBEDDING_PREFIX = "embedding:"
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")
EMPHASIS = 1.1
CHUNK_LENGTH = 77
# Groups of at least this many tokens may be split across windows; shorter ones move whole.
SPLITTABLE_GROUP = 8

_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))
_EMBEDDING_SPLIT = re.compile(r"(?<=\s)" + re.escape(EMBEDDING_PREFIX))
_NAME_STOP = re.compile(r"[<\[]")


# -- emphasis -----------------------------------------------------------------------------------

def _escape(text: str) -> str:
    for plain, code in _ESCAPES:
        text = text.replace(plain, code)
    return text


def _unescape(text: str) -> str:
    for plain, code in _ESCAPES:
        text = text.replace(code, plain[1])
    return text


def _top_level_pieces(text: str) -> list[str]:
    """Cut text into plain runs and top-level ``( ... )`` groups (brackets kept).

    The depth counter may go negative after a stray ")"; a "(" then only climbs back towards
    zero instead of opening a group, which is what makes unmatched brackets stay literal.
    """
    pieces: list[str] = []
    start, depth = 0, 0
    for i, char in enumerate(text):
        if char == "(":
            if depth == 0 and i > start:
                pieces.append(text[start:i])
            if depth == 0:
                start = i
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(text[start:i + 1])
                start = i + 1
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _weigh(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    for piece in _top_level_pieces(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * EMPHASIS
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
        out.extend(_weigh(inner, inner_weight))
    return out


def parse_emphasis(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments; escaped parentheses come back unescaped.

    >>> parse_emphasis("a (b:1.5) \\\\(c\\\\)")
    [('a ', 1.0), ('b', 1.5), (' (c)', 1.0)]
    """
    return [(_unescape(segment), weight) for segment, weight in _weigh(_escape(text), 1.0)]


# -- embeddings ---------------------------------------------------------------------------------

class EmbeddingDirectory:
    """An EmbeddingResolver over folders, searching their subfolders too (as ComfyUI does).

    Names that could leave a folder (absolute, a drive, ``..``) are refused lexically; symlinks
    an owner placed inside a folder are followed, as the model folder listings follow them.
    """

    def __init__(self, folders: Iterable[Path | str]):
        self.folders = [Path(f) for f in folders]

    def __call__(self, name: str) -> Path | None:
        parts = _relative_parts(name)
        if not parts:
            return None
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for directory in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
                candidate = directory.joinpath(*parts)
                if candidate.is_file():
                    return candidate
        return None


def _relative_parts(name: str) -> list[str]:
    """Path components of a name that stays inside whatever folder it is joined to, else []."""
    text = name.replace("\\", "/")
    if "\0" in text or text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return []
    parts = [p for p in text.split("/") if p not in ("", ".")]
    return [] if ".." in parts else parts


def find_embedding_file(resolve: EmbeddingResolver, name: str) -> Path | None:
    """The file for ``name``: tried as given, then with each known extension appended."""
    for candidate in (name, *(name + ext for ext in EMBEDDING_EXTENSIONS)):
        try:
            found = resolve(candidate)
        except (OSError, ValueError):
            found = None
        if found is not None and Path(found).is_file():
            return Path(found)
    return None


def _raw_floats_from_zip(path: Path, width: int) -> torch.Tensor | None:
    """Vectors read straight from a torch zip archive's tensor storage, without unpickling.

    Some old .pt embeddings pickle objects that safe loading refuses; their data records are
    still plain float32 arrays, so the last one whose size fits rows of ``width`` is taken.
    """
    with zipfile.ZipFile(path) as archive:
        for entry in reversed([n for n in archive.namelist() if "/data/" in n]):
            data = archive.read(entry)
            count = len(data) // 4
            if count >= width and count % width == 0:
                return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(-1, width).clone()
    return None


def _pick_vectors(content, width: int, key: str | None) -> torch.Tensor | None:
    """The embedding tensor inside a loaded file, for the known layouts."""
    if isinstance(content, torch.Tensor):
        return content
    if isinstance(content, (list, tuple)):  # a list of {name: tensor} dicts
        rows = [t.reshape(-1, t.shape[-1]) for item in content if isinstance(item, dict)
                for t in item.values() if isinstance(t, torch.Tensor) and t.shape[-1] == width]
        return torch.cat(rows) if rows else None
    if not isinstance(content, dict):
        return None
    params = content.get("string_to_param")  # A1111 training output
    if isinstance(params, dict) and params:
        return next(iter(params.values()))
    if key is not None and isinstance(content.get(key), torch.Tensor):  # SDXL files: clip_l / clip_g
        return content[key]
    # embeddings bundled inside a LoRA file: bundle_emb.<name>.string_to_param.* or .<key>
    for pattern in (r"bundle_emb\..*\.string_to_param\..*", rf"bundle_emb\..*\.{re.escape(key or '')}"):
        bundled = [v for k, v in content.items() if re.fullmatch(pattern, k) and isinstance(v, torch.Tensor)]
        if bundled:
            return torch.cat(bundled)
    tensors = [v for v in content.values() if isinstance(v, torch.Tensor)]
    return tensors[0] if tensors else None


def load_embedding(path: Path | str, width: int, key: str | None = None) -> torch.Tensor | None:
    """Vectors [n, width] from a .safetensors / .pt / .bin embedding file, loaded without pickle code.

    ``key`` picks a tensor by name in files holding one per text encoder ("clip_l", "clip_g").
    Returns None (after a warning) for unreadable files or vectors of another width.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            vectors = _pick_vectors(load_file(str(path), device="cpu"), width, key)
        else:
            try:
                vectors = _pick_vectors(torch.load(path, map_location="cpu", weights_only=True), width, key)
            except Exception:  # unpicklable under weights_only: read the raw storage instead
                vectors = _raw_floats_from_zip(path, width) if zipfile.is_zipfile(path) else None
    except Exception as exc:
        log.warning("could not load embedding %s: %s", path, exc)
        return None
    if vectors is None:
        log.warning("no embedding vectors found in %s", path)
        return None
    vectors = vectors.detach().float().reshape(-1, vectors.shape[-1])
    if vectors.shape[-1] != width:
        log.warning("embedding %s has width %d, this text encoder needs %d; ignored",
                    path.name, vectors.shape[-1], width)
        return None
    return vectors


# -- segments into token groups -----------------------------------------------------------------

def _split_embedding_refs(text: str) -> list[str]:
    """Pieces of a segment: plain text and words that start with "embedding:"."""
    first, *rest = _EMBEDDING_SPLIT.split(text)
    return [p for p in [first, *(EMBEDDING_PREFIX + r for r in rest)] if p]


def _resolve_embedding_ref(ref: str, lookup: Callable[[str], torch.Tensor | None]):
    """(vectors or None, leftover text) for one "embedding:..." piece."""
    words = ref[len(EMBEDDING_PREFIX):].strip("\n").split()
    if not words:
        return None, ref
    name, leftover = words[0], " ".join(words[1:])
    stop = _NAME_STOP.search(name)
    if stop is not None:
        leftover = name[stop.start():] + (" " + leftover if leftover else "")
        name = name[:stop.start()]
    vectors = lookup(name) if name else None
    if vectors is None and name.endswith(","):
        trimmed = name.rstrip(",")
        vectors = lookup(trimmed) if trimmed else None
        leftover = name[len(trimmed):] + " " + leftover
        name = trimmed
    if vectors is None:
        log.warning("embedding:%s does not exist, ignoring", name)
    return vectors, leftover


def weighted_groups(text: str, encode_text: Callable[[str], list[int]], *,
                    embedding_width: int, embedding_key: str | None = None,
                    embeddings: EmbeddingResolver | None = None,
                    disable_weights: bool = False) -> list[Chunk]:
    """A prompt as groups of (token, weight): one per weighted text piece and one per embedding.

    ``encode_text`` turns text into vocabulary ids without start/end tokens. Without an
    ``embeddings`` resolver, "embedding:name" is ordinary text (as in ComfyUI with no folder).
    """
    def lookup(name: str) -> torch.Tensor | None:
        path = find_embedding_file(embeddings, name)
        return None if path is None else load_embedding(path, embedding_width, embedding_key)

    # Escapes are honoured even with weights off, as ComfyUI unescapes every segment.
    segments = [(_unescape(_escape(text)), 1.0)] if disable_weights else parse_emphasis(text)
    groups: list[Chunk] = []
    for segment, weight in segments:
        for piece in _split_embedding_refs(segment):
            if embeddings is not None and piece.startswith(EMBEDDING_PREFIX):
                vectors, piece = _resolve_embedding_ref(piece, lookup)
                if vectors is not None:
                    groups.append([(row, weight) for row in vectors])
                if not piece.strip():
                    continue
            groups.append([(token, weight) for token in encode_text(piece)])
    return groups


def chunk_groups(groups: list[Chunk], *, start_token: int, end_token: int, pad_token: int,
                 length: int = CHUNK_LENGTH) -> list[list[tuple]]:
    """Pack token groups into windows of ``length``: start, up to length-2 tokens, end, padding.

    Items are (token, weight, word id): the word id is the group's number from 1, 0 for start,
    end and padding (ComfyUI's return_word_ids form). There is always at least one window (an
    empty prompt is start, end, padding).
    """
    pad = (pad_token, 1.0, 0)
    room = length - 1  # positions before the end token
    windows: list[list[tuple]] = []
    window: list[tuple] = [(start_token, 1.0, 0)]
    for word_id, group in enumerate(groups, start=1):
        group = [(t, w, word_id) for t, w in group]
        splittable = len(group) >= SPLITTABLE_GROUP
        while group:
            if len(window) + len(group) <= room:
                window.extend(group)
                break
            free = room - len(window)
            if splittable:
                window.extend(group[:free])
                group = group[free:]
                window.append((end_token, 1.0, 0))
            else:
                window.append((end_token, 1.0, 0))
                window.extend([pad] * free)
            windows.append(window)
            window = [(start_token, 1.0, 0)]
    window.append((end_token, 1.0, 0))
    window.extend([pad] * (length - len(window)))
    windows.append(window)
    return windows


def has_weights(chunks) -> bool:
    return any(item[1] != 1.0 for chunk in chunks for item in chunk)
