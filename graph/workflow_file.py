"""Reading workflow files: API-format JSON, UI-format JSON, or a PNG that carries them."""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph import strict_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_CHUNK = 64 << 20  # far above any workflow; ComfyUI's editor saves a few hundred KB


class WorkflowFileError(ValueError):
    """A workflow file that cannot be read; the message names the file and the problem."""


@dataclass
class WorkflowDocument:
    """What a file holds: an API prompt, a UI workflow, or both (a PNG written by SaveImage)."""

    source: str
    prompt: dict | None = None
    workflow: dict | None = None

    def to_api(self, object_info: dict[str, dict]) -> dict:
        """The API prompt to run: the file's own prompt when it has one, else the converted UI graph."""
        if self.prompt is not None:
            return self.prompt
        from graph.ui_convert import WorkflowFormatError, ui_to_api

        try:
            return ui_to_api(self.workflow, object_info)
        except WorkflowFormatError as exc:
            raise WorkflowFileError(f"{self.source}: {exc}") from exc

    def extra_data(self) -> dict:
        return {"extra_pnginfo": {"workflow": self.workflow}} if self.workflow is not None else {}


def read_png_text(data_or_path: bytes | str | Path) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt) as a dict; ValueError when it is not a PNG or a
    text chunk is damaged. Only the chunks are read: the pixels are never decoded, so a huge or
    hostile image costs nothing here."""
    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{data_or_path if not isinstance(data_or_path, bytes) else 'data'} is not a PNG file")
    text: dict[str, str] = {}
    pos = len(PNG_MAGIC)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body_end = pos + 8 + length
        if body_end + 4 > len(data):
            raise ValueError(f"the {kind.decode('latin-1')!r} chunk is cut short")
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            body = data[pos + 8:body_end]
            if zlib.crc32(kind + body) != struct.unpack(">I", data[body_end:body_end + 4])[0]:
                raise ValueError(f"the {kind.decode()} chunk is damaged (CRC mismatch)")
            key, value = _text_chunk(kind, body)
            text.setdefault(key, value)
        elif kind == b"IEND":
            return text
        pos = body_end + 4
    raise ValueError("the file ends before its IEND chunk (cut short?)")


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    """(keyword, text) of one text chunk (PNG spec 11.3.4)."""
    key, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated, _, rest = rest.partition(b"\0")
    return key.decode("latin-1"), (_inflate(rest) if compressed else rest).decode("utf-8", "replace")


def _inflate(data: bytes) -> bytes:
    """zlib data, refused once it inflates past MAX_TEXT_CHUNK (a chunk can be a zip bomb too)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_CHUNK + 1)
    except zlib.error as exc:
        raise ValueError(f"a compressed text chunk is damaged: {exc}") from None
    if len(out) > MAX_TEXT_CHUNK:
        raise ValueError(f"a compressed text chunk inflates to more than {MAX_TEXT_CHUNK // (1 << 20)} MB")
    return out


def parse_document(doc: Any, source: str) -> WorkflowDocument:
    """Classify a parsed JSON document as an API prompt, a UI workflow or a POST /prompt body."""
    from graph.ui_convert import is_ui_workflow

    if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict) and "class_type" not in doc:
        workflow = ((doc.get("extra_data") or {}).get("extra_pnginfo") or {}).get("workflow")
        return WorkflowDocument(source, doc["prompt"], workflow if isinstance(workflow, dict) else None)
    if is_ui_workflow(doc):
        return WorkflowDocument(source, None, doc)
    if isinstance(doc, dict) and doc and all(isinstance(v, dict) and "class_type" in v for v in doc.values()):
        return WorkflowDocument(source, doc, None)
    raise WorkflowFileError(
        f"{source}: not a workflow: expected an API-format prompt ({{id: {{class_type, inputs}}}}) "
        "or a UI-format workflow (with 'nodes' and 'links')")


def read_workflow_file(path: str | Path) -> WorkflowDocument:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkflowFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise WorkflowFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data.startswith(PNG_MAGIC):  # the bytes decide, not the name
        return _from_png(data, str(path))
    try:
        doc = strict_json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise WorkflowFileError(f"{path}: not a PNG and not UTF-8 JSON") from None
    except strict_json.StrictJSONError as exc:
        raise WorkflowFileError(f"{path}: {exc}") from None
    return parse_document(doc, str(path))


def _from_png(data: bytes, source: str) -> WorkflowDocument:
    try:
        text = read_png_text(data)
    except Exception as exc:
        raise WorkflowFileError(f"{source}: damaged PNG: {exc}") from None
    found = {}
    for key in ("prompt", "workflow"):
        if key in text:
            try:
                found[key] = strict_json.loads(text[key])
            except strict_json.StrictJSONError as exc:
                raise WorkflowFileError(f"{source}: the PNG's '{key}' chunk is not acceptable JSON: {exc}") from None
    if not found:
        raise WorkflowFileError(f"{source}: the PNG carries no 'prompt' or 'workflow' text chunk")
    prompt = found.get("prompt") if isinstance(found.get("prompt"), dict) else None
    workflow = found.get("workflow") if isinstance(found.get("workflow"), dict) else None
    if prompt is None and workflow is None:
        raise WorkflowFileError(f"{source}: the PNG's workflow chunks are not JSON objects")
    return WorkflowDocument(source, prompt, workflow)
