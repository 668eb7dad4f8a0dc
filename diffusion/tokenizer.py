"""The CLIP BPE tokenizer, run offline from the vocabulary shipped in diffusion/data/clip_tokenizer.

CLIP-L (SD1, SDXL), OpenCLIP ViT-H (SD2) and ViT-bigG (SDXL) all use this one vocabulary; they
differ only in what pads a window after the end token, which the caller passes in.

The BPE runs on the `tokenizers` library, configured as CLIP's tokenizer is: text is NFC-normalised,
each whitespace run becomes one space and everything is lowercased; it is split into the
contractions 's 't 're 've 'm 'll 'd, runs of letters, single digits and runs of other non-space
characters, each mapped to byte-level symbols; BPE merges then end each word with "</w>", and an
unknown symbol becomes the end token. The two special tokens are matched in the text as they are
in CLIP's tokenizer (start after normalisation, end before it). This gives the same ids as
transformers' CLIPTokenizer (tests/test_tokenizer_parity.py) without importing transformers.
"""
from __future__ import annotations

from pathlib import Path

from .prompt_weights import Chunk, EmbeddingResolver, chunk_groups, weighted_groups

VOCAB_DIR = Path(__file__).parent / "data" / "clip_tokenizer"
START, END = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
# letters and digits as Unicode classes, so accented words stay one piece and numbers split per digit
PIECES = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_bpe(vocab_dir: Path | str = VOCAB_DIR):
    """A `tokenizers.Tokenizer` for CLIP's BPE from vocab.json and merges.txt in ``vocab_dir``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab_dir = Path(vocab_dir)
    bpe = Tokenizer(BPE.from_file(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"),
                                  unk_token=END, end_of_word_suffix=END_OF_WORD, continuing_subword_prefix="",
                                  fuse_unk=False))
    bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PIECES), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(START, normalized=True, special=True),
                            AddedToken(END, normalized=False, special=True)])
    return bpe


class ClipTokenizer:
    """Prompt text -> 77-token windows of (token, weight), with ComfyUI's emphasis rules."""

    def __init__(self, vocab_dir: Path | str = VOCAB_DIR):
        self.bpe = clip_bpe(vocab_dir)
        # The start/end ids come from the vocabulary itself rather than being hard-coded, so a
        # different CLIP vocabulary directory still gets the right ones.
        self.start_token, self.end_token = self.bpe.token_to_id(START), self.bpe.token_to_id(END)

    def encode_text(self, text: str) -> list[int]:
        """Vocabulary ids for plain text, without the start and end tokens."""
        return self.bpe.encode(text, add_special_tokens=False).ids

    def encode(self, text: str) -> list[int]:
        """Vocabulary ids with start and end tokens, untruncated (what CLIP's own tokenizer gives)."""
        return [self.start_token, *self.encode_text(text), self.end_token]

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens left out, one space after each word."""
        return self.bpe.decode(list(ids), skip_special_tokens=True).replace(END_OF_WORD, " ").strip()

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.bpe.id_to_token(i) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        return self.bpe.get_vocab(with_added_tokens=True)

    def tokenize_with_weights(self, text: str, *, pad_token: int | None = None, embedding_width: int = 768,
                              embedding_key: str | None = "clip_l", embeddings: EmbeddingResolver | None = None,
                              disable_weights: bool = False, return_word_ids: bool = False) -> list[Chunk]:
        """The prompt as windows of 77 (token, weight) pairs.

        ``pad_token`` fills each window after its end token: the end token itself for CLIP-L
        (the default), 0 for OpenCLIP ViT-H and bigG, as ComfyUI pads them. ``embeddings``
        resolves ``embedding:name`` references; their vectors (of ``embedding_width``) appear
        as tensors in place of token ids. With ``return_word_ids`` items are (token, weight,
        word id), the id numbering the prompt's weighted pieces and embeddings from 1.
        """
        groups = weighted_groups(text, self.encode_text, embedding_width=embedding_width,
                                 embedding_key=embedding_key, embeddings=embeddings,
                                 disable_weights=disable_weights)
        windows = chunk_groups(groups, start_token=self.start_token, end_token=self.end_token,
                               pad_token=self.end_token if pad_token is None else pad_token)
        if return_word_ids:
            return windows
        return [[(t, w) for t, w, _ in window] for window in windows]


class TowerTokenizer:
    """The tokenizer of one text encoder (ComfyUI's SDTokenizer): the shared BPE plus this
    encoder's padding, embedding width and embedding-file key."""

    embedding_identifier = "embedding:"
    max_length = 77

    def __init__(self, bpe: ClipTokenizer, pad_token: int, embedding_size: int, embedding_key: str,
                 embeddings: EmbeddingResolver | None = None):
        self.bpe = bpe
        self.start_token, self.end_token = bpe.start_token, bpe.end_token
        self.pad_token = pad_token
        self.pad_with_end = pad_token == bpe.end_token
        self.embedding_size = embedding_size
        self.embedding_key = embedding_key
        self.embedding_directory = embeddings
        self.tokens_start, self.pad_to_max_length = 1, True

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs) -> list:
        return self.bpe.tokenize_with_weights(
            text, pad_token=self.pad_token, embedding_width=self.embedding_size, embedding_key=self.embedding_key,
            embeddings=self.embedding_directory, disable_weights=kwargs.get("disable_weights", False),
            return_word_ids=return_word_ids)

    @property
    def inv_vocab(self) -> dict:
        return {v: k for k, v in self.bpe.get_vocab().items()}

    def untokenize(self, token_weight_pair) -> list:
        strings = self.bpe.token_strings([t[0] for t in token_weight_pair])
        return [(pair, s) for pair, s in zip(token_weight_pair, strings)]

    def state_dict(self) -> dict:
        return {}


class FamilyTokenizer:
    """A model family's tokenizers (ComfyUI's SD1Tokenizer / SDXLTokenizer): `tokenize_with_weights`
    returns {encoder name: windows}, and each encoder's tokenizer is also an attribute clip_<name>."""

    def __init__(self, towers: dict[str, TowerTokenizer]):
        self.towers = dict(towers)
        for name, tower in self.towers.items():
            setattr(self, f"clip_{name}", tower)
        self.clip_name = next(iter(self.towers))
        self.clip = f"clip_{self.clip_name}"

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        return {name: tower.tokenize_with_weights(text, return_word_ids, **kwargs)
                for name, tower in self.towers.items()}

    def untokenize(self, token_weight_pair) -> list:
        return next(iter(self.towers.values())).untokenize(token_weight_pair)

    def state_dict(self) -> dict:
        return {}
