"""The CLIP BPE tokenizer, run offline from the vocabulary shipped in diffusion/data/clip_tokenizer.

CLIP-L (SD1, SDXL), OpenCLIP ViT-H (SD2) and ViT-bigG (SDXL) all use this one vocabulary; they
differ only in what pads a window after the end token, which the caller passes in. The BPE
itself is transformers' CLIPTokenizer reading the local files, never the hub.
"""
from __future__ import annotations

from pathlib import Path

from .prompt_weights import Chunk, EmbeddingResolver, chunk_groups, weighted_groups

VOCAB_DIR = Path(__file__).parent / "data" / "clip_tokenizer"


class ClipTokenizer:
    """Prompt text -> 77-token windows of (token, weight), with ComfyUI's emphasis rules."""

    def __init__(self, vocab_dir: Path | str = VOCAB_DIR):
        from transformers import CLIPTokenizer

        self.bpe = CLIPTokenizer.from_pretrained(str(vocab_dir), local_files_only=True)
        # The start/end ids come from the vocabulary itself rather than being hard-coded, so a
        # different CLIP vocabulary directory still gets the right ones.
        self.start_token, self.end_token = self.bpe("")["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        """Vocabulary ids for plain text, without the start and end tokens."""
        return self.bpe(text)["input_ids"][1:-1]

    def encode(self, text: str) -> list[int]:
        """Vocabulary ids with start and end tokens, untruncated (what CLIP's own tokenizer gives)."""
        return self.bpe(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.bpe.decode(ids, skip_special_tokens=True)

    def token_strings(self, ids: list[int]) -> list[str]:
        return self.bpe.convert_ids_to_tokens(ids)

    def tokenize_with_weights(self, text: str, *, pad_token: int | None = None, embedding_width: int = 768,
                              embedding_key: str | None = "clip_l", embeddings: EmbeddingResolver | None = None,
                              disable_weights: bool = False) -> list[Chunk]:
        """The prompt as windows of 77 (token, weight) pairs.

        ``pad_token`` fills each window after its end token: the end token itself for CLIP-L
        (the default), 0 for OpenCLIP ViT-H and bigG, as ComfyUI pads them. ``embeddings``
        resolves ``embedding:name`` references; their vectors (of ``embedding_width``) appear
        as tensors in place of token ids.
        """
        groups = weighted_groups(text, self.encode_text, embedding_width=embedding_width,
                                 embedding_key=embedding_key, embeddings=embeddings,
                                 disable_weights=disable_weights)
        return chunk_groups(groups, start_token=self.start_token, end_token=self.end_token,
                            pad_token=self.end_token if pad_token is None else pad_token)
