"""Our CLIP tokenizer (built on `tokenizers`) gives the ids and text transformers' CLIPTokenizer gives.

transformers' CLIPTokenizer, loaded from the same shipped vocabulary, is the reference: it is what
ComfyUI's SDTokenizer runs, so equal ids mean equal conditioning.
"""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion.tokenizer import VOCAB_DIR, ClipTokenizer

PROMPTS = [
    "", " ", "a photo of a cat", "A PHOTO Of A Cat", "MiXeD CaSe WoRdS",
    "masterpiece, best quality, 1girl, solo, looking at viewer!!!", "cat,dog;bird:fish.",
    "what's this? it's a dog's toy, isn't it; we're sure they've gone, i'm sure we'll, he'd",
    "IT'S LOUD", "'s 't 're", "rock'n'roll", "\"quoted\" and `backticks`", "~!@#$%^&*()_+-={}[]|\\:;<>?,./",
    "1234567890 3.14159 -42 1e10 0x1F 2nd 100%", "24mm f/1.8, ISO 100, 1/250s",
    "café naïve résumé façade Ångström Øresund", "e\u0301 (combining accent, NFC makes it é)",
    "日本語のプロンプト 中文提示 한국어", "Привет мир, Ελληνικά, עברית, العربية", "ﬁ ligature and ｆｕｌｌｗｉｄｔｈ",
    "emoji 🐱🐶 👩‍💻 🏳️‍🌈 ❤️", "a    lot     of   spaces", "new\nlines\n\n\nand\ttabs\r\nand CRLF",
    "  leading and trailing  ", "\u00a0non-breaking\u2003em space\u3000ideographic",
    "embedding:foo, embedding:my_embed.pt a cat", "(word:1.2) [less] ((more)) (a (b:1.1):0.9)",
    "\\(escaped\\) parens", "photorealistic hyperdetailed unbelievably", "supercalifragilisticexpialidocious",
    "<|startoftext|> inside text <|endoftext|> twice <|endoftext|>", "<|STARTOFTEXT|> and <|ENDOFTEXT|>",
    "x<|endoftext|>y", "a_b-c--d__e", "#hashtag @mention https://example.com/a?b=c&d=e",
    "\x00control\x07chars\x1b", "zero\u200bwidth\u200djoiner", "\U0001d400\U0001d401 maths letters",
    ", ".join(f"word{i}" for i in range(200)),
    "a very long prompt " * 120,
]


@pytest.fixture(scope="module")
def ours():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def reference():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(VOCAB_DIR), local_files_only=True)


def check(ours, reference, text):
    expected = reference(text)["input_ids"]
    assert ours.encode(text) == expected, text
    assert ours.encode_text(text) == expected[1:-1], text
    assert ours.token_strings(expected) == reference.convert_ids_to_tokens(expected), text
    assert ours.decode(expected) == reference.decode(expected, skip_special_tokens=True), text


@pytest.mark.parametrize("text", PROMPTS)
def test_same_ids_and_text_as_transformers(ours, reference, text):
    check(ours, reference, text)


def test_special_tokens_and_vocabulary(ours, reference):
    assert (ours.start_token, ours.end_token) == (reference.bos_token_id, reference.eos_token_id) == (49406, 49407)
    assert ours.get_vocab() == reference.get_vocab()


def test_decodes_ids_that_are_not_whole_words(ours, reference):
    # a window's ids decoded piece by piece (as a UI shows tokens), including pieces without </w>
    ids = ours.encode("photorealistic unbelievably 🐱")
    for cut in range(1, len(ids)):
        assert ours.decode(ids[:cut]) == reference.decode(ids[:cut], skip_special_tokens=True)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_arbitrary_text(ours, reference, text):
    check(ours, reference, text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["cat", "Dog", "'s", "'T", ",", "(", ":1.2)", " ", "  ", "\n", "é", "e\u0301",
                                 "12", "🐱", "<|endoftext|>", "<|startoftext|>", "embedding:", "_", "ß", "İ"]),
                max_size=30))
def test_prompt_like_text(ours, reference, pieces):
    check(ours, reference, "".join(pieces))


def test_tower_tokenizer_vocabulary_views(ours, reference):
    # ComfyUI's SDTokenizer API: inv_vocab and untokenize name the pieces of a window
    from diffusion.tokenizer import TowerTokenizer

    tower = TowerTokenizer(ours, pad_token=0, embedding_size=768, embedding_key="clip_l")
    assert tower.inv_vocab == {v: k for k, v in reference.get_vocab().items()}
    (window,) = tower.tokenize_with_weights("a (photorealistic:1.2) cat")
    pieces = tower.untokenize(window)
    assert [s for _, s in pieces[:6]] == reference.convert_ids_to_tokens(reference("a photorealistic cat")["input_ids"])[:6]
    assert pieces[2] == ((window[2][0], 1.2), "photo")
