"""The shipped CLIP BPE vocabulary and the tokenizer built on it."""
import json

import pytest

from diffusion.tokenizer import VOCAB_DIR, ClipTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def vocab():
    return json.loads((VOCAB_DIR / "vocab.json").read_text(encoding="utf-8"))


def test_vocabulary_is_shipped_and_small():
    names = {p.name for p in VOCAB_DIR.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    total = sum(p.stat().st_size for p in VOCAB_DIR.iterdir())
    assert total < 3_000_000, total  # vocab + merges are ~1.6 MB; anything bigger is not just BPE data


def test_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert ClipTokenizer().encode("cat")[1:-1] == [2368]


def test_standard_clip_ids(tokenizer, vocab):
    ids = tokenizer.encode("a photo of a cat")
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # the same ids read straight from the vocabulary (whole words end in </w>)
    words = [vocab[w + "</w>"] for w in "a photo of a cat".split()]
    assert ids == [vocab["<|startoftext|>"], *words, vocab["<|endoftext|>"]]
    assert (tokenizer.start_token, tokenizer.end_token) == (49406, 49407)


def test_lowercases_and_splits_punctuation(tokenizer, vocab):
    assert tokenizer.encode_text("A PHOTO, Of a  Cat") == tokenizer.encode_text("a photo , of a cat")
    assert tokenizer.encode_text("cat,dog") == [vocab["cat</w>"], vocab[",</w>"], vocab["dog</w>"]]


def test_subword_merges(tokenizer, vocab):
    ids = tokenizer.encode_text("photorealistic")
    pieces = tokenizer.token_strings(ids)
    assert len(ids) > 1 and "".join(pieces).replace("</w>", "") == "photorealistic"
    assert all(vocab[p] == i for p, i in zip(pieces, ids))
    assert tokenizer.decode(tokenizer.encode("a photorealistic cat")) == "a photorealistic cat"


def test_windows_with_weights(tokenizer, vocab):
    (window,) = tokenizer.tokenize_with_weights("a (red:1.5) cat")
    assert len(window) == 77
    assert window[:5] == [(49406, 1.0), (320, 1.0), (vocab["red</w>"], 1.5), (2368, 1.0), (49407, 1.0)]
    assert window[5:] == [(49407, 1.0)] * 72  # CLIP-L pads with the end token


def test_open_clip_padding_is_zero(tokenizer):
    (window,) = tokenizer.tokenize_with_weights("a cat", pad_token=0)
    assert [t for t, _ in window[:4]] == [49406, 320, 2368, 49407]
    assert {t for t, _ in window[4:]} == {0}


def test_empty_prompt(tokenizer):
    (window,) = tokenizer.tokenize_with_weights("")
    assert [t for t, _ in window] == [49406] + [49407] * 76
