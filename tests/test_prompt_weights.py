"""Emphasis syntax, embeddings and 77-token windows, with ComfyUI's results as the reference."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from diffusion.prompt_weights import (EmbeddingDirectory, chunk_groups, find_embedding_file, load_embedding,
                                      parse_emphasis)
from diffusion.tokenizer import ClipTokenizer

START, END = 49406, 49407
CAT, A, PHOTO = 2368, 320, 1125


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


def approx_pairs(pairs):
    return [(text, pytest.approx(weight)) for text, weight in pairs]


@pytest.mark.parametrize("text, expected", [
    ("plain text", [("plain text", 1.0)]),
    ("(foo)", [("foo", 1.1)]),
    ("(foo)(bar)", [("foo", 1.1), ("bar", 1.1)]),
    ("((foo))", [("foo", 1.21)]),
    ("(((foo)))", [("foo", 1.331)]),
    ("(foo:2.0)", [("foo", 2.0)]),
    ("(foo:0.0)", [("foo", 0.0)]),
    ("(foo: 0.5 )", [("foo", 0.5)]),
    ("(foo:-1)", [("foo", -1.0)]),
    # an explicit weight replaces the enclosing one ...
    ("((foo:1.1))", [("foo", 1.1)]),
    ("((foo:1.0):0.0)", [("foo", 1.0)]),
    # ... while a bare inner group still multiplies an explicit outer weight
    ("((foo):1.1)", [("foo", 1.21)]),
    ("((foo):1.5)", [("foo", 1.65)]),
    ("foo ((((lol (cat:666) attack:100)))) baz",
     [("foo ", 1.0), ("lol ", 100.0), ("cat", 666.0), (" attack", 100.0), (" baz", 1.0)]),
    ("foo ((((lol (cat:666) attack):100))) baz",
     [("foo ", 1.0), ("lol ", 110.0), ("cat", 666.0), (" attack", 110.0), (" baz", 1.0)]),
    ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
])
def test_parentheses(text, expected):
    assert parse_emphasis(text) == approx_pairs(expected)


@pytest.mark.parametrize("text, expected", [
    ("(foo:bar)", [("foo:bar", 1.1)]),  # not a number: the colon stays text, the group is x1.1
    ("(:1.5)", [(":1.5", 1.1)]),  # a colon at the very start is not a weight
    ("(a:1:2)", [("a:1", 2.0)]),  # the last colon counts
    ("(12:00 pm)", [("12:00 pm", 1.1)]),
])
def test_weight_parsing_edge_cases(text, expected):
    assert parse_emphasis(text) == approx_pairs(expected)


def test_square_brackets_are_literal_as_in_comfyui():
    assert parse_emphasis("[foo]") == [("[foo]", 1.0)]
    assert parse_emphasis("[[foo]]") == [("[[foo]]", 1.0)]
    assert parse_emphasis("([foo])") == approx_pairs([("[foo]", 1.1)])


def test_escapes():
    assert parse_emphasis(r"\(foo\)") == [("(foo)", 1.0)]
    assert parse_emphasis(r"(a \(b\):1.3)") == approx_pairs([("a (b)", 1.3)])
    assert parse_emphasis(r"\((b)\)") == approx_pairs([("(", 1.0), ("b", 1.1), (")", 1.0)])
    # ComfyUI has no bracket escapes: the backslash reaches the tokenizer
    assert parse_emphasis(r"\[x\]") == [(r"\[x\]", 1.0)]


@pytest.mark.parametrize("text, expected", [
    ("(a b", [("(a b", 1.0)]),
    ("a) b", [("a) b", 1.0)]),
    ("a) (b)", [("a) (b)", 1.0)]),  # after a stray ")" the next group only balances it
    ("a) ((b))", [("a) (", 1.0), ("b", 1.1), (")", 1.0)]),
    ("(a (b)", [("a ", 1.1), ("(b", 1.1)]),
    ("(a) b)", [("a", 1.1), (" b)", 1.0)]),
])
def test_unmatched_brackets_are_tolerated(text, expected):
    assert parse_emphasis(text) == approx_pairs(expected)


# -- token weights ------------------------------------------------------------------------------

def pairs(window):
    return [(t, round(w, 6)) for t, w in window if t not in (START, END)]


def test_token_weights(tokenizer):
    ids = tokenizer.encode_text
    (window,) = tokenizer.tokenize_with_weights("a ((red)) (cat:1.5) [photo]")
    expected = [(A, 1.0), (ids("red")[0], 1.21), (CAT, 1.5)] + [(t, 1.0) for t in ids("[photo]")]
    assert pairs(window) == expected
    assert window[0] == (START, 1.0) and window[len(expected) + 1] == (END, 1.0)


def test_escaped_parentheses_tokenize_as_parentheses(tokenizer):
    (window,) = tokenizer.tokenize_with_weights(r"\(cat\)")
    assert pairs(window) == [(t, 1.0) for t in tokenizer.encode_text("(cat)")]


# -- windows ------------------------------------------------------------------------------------

def test_long_prompt_windows(tokenizer):
    windows = tokenizer.tokenize_with_weights("cat " * 100)
    assert [len(w) for w in windows] == [77, 77]
    first, second = windows
    assert first == [(START, 1.0)] + [(CAT, 1.0)] * 75 + [(END, 1.0)]
    assert second[:27] == [(START, 1.0)] + [(CAT, 1.0)] * 25 + [(END, 1.0)]
    assert second[27:] == [(END, 1.0)] * 50


def test_exactly_75_tokens_fit_one_window(tokenizer):
    assert len(tokenizer.tokenize_with_weights("cat " * 75)) == 1
    assert len(tokenizer.tokenize_with_weights("cat " * 76)) == 2


def test_short_group_moves_whole_to_next_window(tokenizer):
    dog = tokenizer.encode_text("a big red dog")
    assert len(dog) == 4
    first, second = tokenizer.tokenize_with_weights("cat " * 73 + "(a big red dog:1.2)", pad_token=0)
    assert first == [(START, 1.0)] + [(CAT, 1.0)] * 73 + [(END, 1.0)] + [(0, 1.0)] * 2
    assert pairs(second)[:4] == [(t, 1.2) for t in dog]
    assert second[5] == (END, 1.0) and {t for t, _ in second[6:]} == {0}


def test_long_group_is_split_at_the_window_edge(tokenizer):
    phrase = tokenizer.encode_text("a big red dog on a green mat")
    assert len(phrase) == 8
    first, second = tokenizer.tokenize_with_weights("cat " * 73 + "(a big red dog on a green mat:1.2)")
    assert first[74:76] == [(t, 1.2) for t in phrase[:2]] and first[76] == (END, 1.0)
    assert second[1:7] == [(t, 1.2) for t in phrase[2:]] and second[7] == (END, 1.0)


def test_chunk_groups_directly():
    # Items carry ComfyUI's word ids: the group's number from 1, 0 for start, end and padding.
    groups = [[(1, 1.0)] * 3, [(2, 2.0)] * 3]
    (window,) = chunk_groups(groups, start_token=9, end_token=8, pad_token=0, length=10)
    assert window == [(9, 1.0, 0)] + [(1, 1.0, 1)] * 3 + [(2, 2.0, 2)] * 3 + [(8, 1.0, 0), (0, 1.0, 0), (0, 1.0, 0)]
    windows = chunk_groups([[(1, 1.0)] * 12], start_token=9, end_token=8, pad_token=0, length=10)
    assert [[t for t, _, _ in w] for w in windows] == [[9] + [1] * 8 + [8], [9] + [1] * 4 + [8] + [0] * 4]


def test_word_ids_on_request(tokenizer):
    """return_word_ids gives (token, weight, word id); the ids number the weighted pieces."""
    plain = tokenizer.tokenize_with_weights("a cat (on a mat:1.2)")
    with_ids = tokenizer.tokenize_with_weights("a cat (on a mat:1.2)", return_word_ids=True)
    assert [(t, w) for t, w, _ in with_ids[0]] == plain[0]
    ids = [i for _, w, i in with_ids[0] if i]
    weights = [w for _, w, i in with_ids[0] if i]
    assert sorted(set(ids)) == [1, 2] and weights == [1.0 if i == 1 else 1.2 for i in ids]


# -- embeddings ---------------------------------------------------------------------------------

@pytest.fixture
def embedding_dir(tmp_path):
    torch.manual_seed(0)
    folder = tmp_path / "embeddings"
    (folder / "styles").mkdir(parents=True)
    vectors = {
        "two": torch.randn(2, 768),
        "one": torch.randn(768),
        "a1111": torch.randn(3, 768),
        "xl_l": torch.randn(2, 768),
        "xl_g": torch.randn(2, 1280),
    }
    save_file({"emb_params": vectors["two"]}, folder / "two.safetensors")
    torch.save({"string_to_param": {"*": vectors["a1111"]}, "name": "a1111", "step": 3000}, folder / "a1111.pt")
    torch.save(vectors["one"], folder / "styles" / "one.bin")
    save_file({"clip_l": vectors["xl_l"], "clip_g": vectors["xl_g"]}, folder / "xl.safetensors")
    return folder, vectors


def vector_positions(window):
    return [(j, t) for j, (t, _) in enumerate(window) if isinstance(t, torch.Tensor)]


def test_embedding_replaces_tokens(tokenizer, embedding_dir):
    folder, vectors = embedding_dir
    (window,) = tokenizer.tokenize_with_weights("a embedding:two cat", embeddings=EmbeddingDirectory([folder]))
    assert [t for t, _ in window[:2]] == [START, A]
    assert [j for j, _ in vector_positions(window)] == [2, 3]
    assert torch.equal(window[2][0], vectors["two"][0]) and torch.equal(window[3][0], vectors["two"][1])
    assert [t for t, _ in window[4:6]] == [CAT, END]
    assert len(window) == 77


def test_embedding_formats_weights_and_leftovers(tokenizer, embedding_dir):
    folder, vectors = embedding_dir
    resolve = EmbeddingDirectory([folder])
    (window,) = tokenizer.tokenize_with_weights("(embedding:a1111:1.3), embedding:one, cat", embeddings=resolve)
    found = vector_positions(window)
    assert [j for j, _ in found] == [1, 2, 3, 5]  # a1111's three rows, a comma, then one (from a subfolder)
    assert all(window[j][1] == pytest.approx(1.3) for j in (1, 2, 3))
    assert torch.equal(found[3][1], vectors["one"])
    comma = tokenizer.encode_text(",")[0]
    assert [t for t, _ in window[4:5]] == [comma]
    assert [t for t, _ in window[6:9]] == [comma, CAT, END]  # the trailing comma of "one," is kept as text


def test_multi_encoder_embedding_file_picks_by_key(tokenizer, embedding_dir):
    folder, vectors = embedding_dir
    resolve = EmbeddingDirectory([folder])
    (g_window,) = tokenizer.tokenize_with_weights("embedding:xl", pad_token=0, embedding_width=1280,
                                                  embedding_key="clip_g", embeddings=resolve)
    assert torch.equal(torch.stack([t for _, t in vector_positions(g_window)]), vectors["xl_g"])
    (l_window,) = tokenizer.tokenize_with_weights("embedding:xl", embeddings=resolve)
    assert torch.equal(torch.stack([t for _, t in vector_positions(l_window)]), vectors["xl_l"])


def test_missing_or_mismatched_embedding_is_dropped(tokenizer, embedding_dir, caplog):
    folder, _ = embedding_dir
    resolve = EmbeddingDirectory([folder])
    with caplog.at_level(logging.WARNING):
        (window,) = tokenizer.tokenize_with_weights("embedding:nothere cat", embeddings=resolve)
        (wide,) = tokenizer.tokenize_with_weights("embedding:two cat", embedding_width=1024, embeddings=resolve)
    assert [t for t, _ in window[:3]] == [START, CAT, END]
    assert [t for t, _ in wide[:3]] == [START, CAT, END]
    assert "nothere" in caplog.text and "width" in caplog.text


def test_embedding_syntax_needs_whitespace_or_a_resolver(tokenizer, embedding_dir):
    folder, _ = embedding_dir
    literal = tokenizer.encode_text("a embedding:two")
    (window,) = tokenizer.tokenize_with_weights("a embedding:two")  # no resolver: plain text
    assert pairs(window) == [(t, 1.0) for t in literal]
    (window,) = tokenizer.tokenize_with_weights("a,embedding:two", embeddings=EmbeddingDirectory([folder]))
    assert not vector_positions(window)


def test_embedding_names_cannot_leave_the_folder(tmp_path, embedding_dir):
    folder, _ = embedding_dir
    save_file({"emb_params": torch.zeros(1, 768)}, tmp_path / "outside.safetensors")
    resolve = EmbeddingDirectory([folder])
    assert find_embedding_file(resolve, "../outside") is None
    assert find_embedding_file(resolve, str(tmp_path / "outside")) is None
    assert find_embedding_file(resolve, r"..\outside") is None
    assert find_embedding_file(resolve, "styles/../../outside") is None
    assert find_embedding_file(resolve, "two").resolve() == (folder / "two.safetensors").resolve()
    assert find_embedding_file(resolve, "styles/one").name == "one.bin"


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.makedirs, (self.marker,)


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    vectors = torch.randn(2, 768)
    torch.save({"string_to_param": {"*": vectors}, "trap": _Exploit(str(marker))}, tmp_path / "evil.pt")
    loaded = load_embedding(tmp_path / "evil.pt", 768)
    assert not marker.exists()
    assert loaded is not None and torch.equal(loaded, vectors)  # read from the raw tensor storage


def test_disable_weights_keeps_escapes(tokenizer):
    (window,) = tokenizer.tokenize_with_weights(r"(a:1.5) \(cat\)", disable_weights=True)
    assert pairs(window) == [(t, 1.0) for t in tokenizer.encode_text("(a:1.5) (cat)")]
