"""Reading and writing .safetensors files without the safetensors package.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian data. Only what the preview decoder needs:
whole-file loads of modest files onto the CPU.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 100 << 20


class TensorFileError(ValueError):
    pass


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise TensorFileError(f"{path}: too short to be a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > min(MAX_HEADER, len(data) - 8):
        raise TensorFileError(f"{path}: header length {size} does not fit the file")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError as exc:
        raise TensorFileError(f"{path}: unreadable header: {exc}") from None
    body = memoryview(data)[8 + size:]
    out: dict[str, torch.Tensor] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[spec["dtype"]]
            begin, end = spec["data_offsets"]
            shape = [int(d) for d in spec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"{path}: tensor {name!r} has a malformed header entry") from None
        if not 0 <= begin <= end <= len(body):
            raise TensorFileError(f"{path}: tensor {name!r} lies outside the file")
        chunk = bytearray(body[begin:end])  # a writable copy, so torch owns its memory
        tensor = torch.frombuffer(chunk, dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
        if tensor.numel() != _numel(shape):
            raise TensorFileError(f"{path}: tensor {name!r} has {tensor.numel()} values for shape {shape}")
        out[name] = tensor.reshape(shape)
    return out


def save_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    header: dict[str, dict] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        blob = tensor.detach().contiguous().cpu().numpy().tobytes() if tensor.dtype != torch.bfloat16 \
            else tensor.detach().contiguous().cpu().view(torch.int16).numpy().tobytes()
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # keep tensor data 8-byte aligned
    Path(path).write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a pickled .pth/.pt (weights only, never code)."""
    path = Path(path)
    if path.suffix in (".safetensors", ".sft"):
        return load_safetensors(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TensorFileError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
