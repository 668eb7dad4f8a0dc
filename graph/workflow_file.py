"""Reading workflow files: API-format JSON, UI-format JSON, or a PNG that carries them."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    """The PNG's text chunks (tEXt, zTXt, iTXt) as a dict; ValueError when it is not a PNG."""
    from io import BytesIO

    from PIL import Image

    data = data_or_path if isinstance(data_or_path, bytes) else Path(data_or_path).read_bytes()
    if not data.startswith(PNG_MAGIC):
        raise ValueError(f"{data_or_path if not isinstance(data_or_path, bytes) else 'data'} is not a PNG file")
    with Image.open(BytesIO(data)) as image:
        image.load()
        return {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}


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
        doc = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise WorkflowFileError(f"{path}: not a PNG and not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise WorkflowFileError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
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
                found[key] = json.loads(text[key])
            except json.JSONDecodeError as exc:
                raise WorkflowFileError(f"{source}: the PNG's '{key}' chunk is malformed JSON: {exc.msg}") from None
    if not found:
        raise WorkflowFileError(f"{source}: the PNG carries no 'prompt' or 'workflow' text chunk")
    prompt = found.get("prompt") if isinstance(found.get("prompt"), dict) else None
    workflow = found.get("workflow") if isinstance(found.get("workflow"), dict) else None
    if prompt is None and workflow is None:
        raise WorkflowFileError(f"{source}: the PNG's workflow chunks are not JSON objects")
    return WorkflowDocument(source, prompt, workflow)
