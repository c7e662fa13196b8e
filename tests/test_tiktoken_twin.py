"""The default tokenizer's tiktoken twin gives the library's ids on any text, and tokenizers it cannot
match get no twin."""

import json
import pickle
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from services.data.tiktoken_twin import adopt_twin, twin_of
from services.data.tokenization import encode_texts

# Every kind of character the twin's pattern and its fallback handle: contractions, digit runs, runs of
# spaces before words and at the end, tabs and line breaks, Latin-1 and curly punctuation, the Unicode
# spaces of General Punctuation, control characters the vocabulary has no byte for, and characters the
# twin leaves to the library (emoji, CJK, a Unicode 15 letter).
ALPHABET = [
    *"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    *" " * 12,
    *"\t\n\r\x0b\x0c",
    *".,;:!?-_/\\()[]{}<>@#$%^&*+=|~`\"'",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S",
    *"éèßøÆñüÿ¡¿«»¬\xad\xa0",
    *"\u2019\u201c\u201d\u2014\u2013\u2026\u2003\u2009\u2028\u2029\u200b\u2060",
    *"\x04\x06\x13\x1d\x7f\x85",
    "😀", "漢字", "\U0001e030",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start", "im_end|>",
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    return AutoTokenizer.from_pretrained(default_model_dir)


def library_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_the_twin_encodes_every_text_as_the_library_does(tokenizer):
    twin = twin_of(tokenizer)
    assert twin is not None, "the default tokenizer is byte-level BPE: it must have a twin"
    generator = random.Random(17)
    texts = ["", " ", "  ", "a  b", "a \n\n b ", "x\u2003 y", "It's 2026's 12345 items"]
    texts += ["".join(generator.choices(ALPHABET, k=generator.randint(1, 60))) for _ in range(4000)]
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": text}, {"role": "assistant", "content": text[::-1]}], tokenize=False
        )
        for text in texts[:500]
    ]
    assert sum(ids is not None for ids in twin.encode(texts + chats)) > 1000, (
        "the twin must encode many of them"
    )
    assert encode_texts(tokenizer, texts + chats) == library_ids(tokenizer, texts + chats)


def test_special_free_texts_encoded_in_one_call_get_each_their_own_ids(tokenizer):
    """Prepare's pieces between special tokens go to tiktoken joined by a separator token and are cut apart
    again: empty pieces, pieces ending or starting in spaces and line breaks (where the pattern's look-ahead
    could join them across a cut), and pieces left to the library keep their places."""
    generator = random.Random(23)
    plain = [c for c in ALPHABET if "<|" not in c and "|>" not in c]
    texts = ["", "", " ", "\n", "a ", " b", "x\n\n", "😀", ""]
    texts += ["".join(generator.choices(plain, k=generator.randint(0, 40))) for _ in range(3000)]
    assert encode_texts(tokenizer, texts, special_free=True) == library_ids(tokenizer, texts)
    assert encode_texts(tokenizer, [], special_free=True) == []


def test_a_text_given_as_special_free_that_holds_a_special_token_is_refused(tokenizer):
    every_special = "".join(token.content for token in tokenizer.added_tokens_decoder.values())
    with pytest.raises(ValueError, match="separator"):
        twin_of(tokenizer).encode(["a", f"b{every_special}c", "d"], special_free=True)


def test_a_twin_handed_to_another_process_encodes_as_the_library_does(tokenizer, default_model_dir: Path):
    """The data service hands its twin to its encoding helper (pickled), for the helper's own tokenizer."""
    texts = [
        "It's 2026's 12345 items",
        "a \n\n b ",
        "😀 left to the library",
        "<|im_start|>user\nhi<|im_end|>",
    ]
    received = pickle.loads(pickle.dumps(twin_of(tokenizer)))
    helper_tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    adopt_twin(helper_tokenizer, received)
    assert twin_of(helper_tokenizer) is received
    assert encode_texts(helper_tokenizer, texts) == library_ids(tokenizer, texts)
    assert received.encode(texts) == twin_of(tokenizer).encode(texts)


def _variant(tokenizer, change) -> PreTrainedTokenizerFast:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    change(spec)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)))


def _swap_two_merges(spec: dict) -> None:
    merges = spec["model"]["merges"]
    merges[100], merges[101] = merges[101], merges[100]  # ids no longer rise in merge order


def _lowercase(spec: dict) -> None:
    spec["normalizer"] = {"type": "Lowercase"}


def _prefix_space(spec: dict) -> None:
    spec["pre_tokenizer"]["add_prefix_space"] = True


@pytest.mark.parametrize("change", [_swap_two_merges, _lowercase, _prefix_space])
def test_a_tokenizer_the_twin_cannot_match_keeps_the_library(tokenizer, change):
    variant = _variant(tokenizer, change)
    assert twin_of(variant) is None
    # Unchanged, the same way of building a tokenizer gets a twin: the change is what refused it.
    assert twin_of(_variant(tokenizer, lambda spec: None)) is not None


class _SplitOnSpaces:
    """A pre-tokenizer written in Python: its tokenizer cannot be serialised, so it can have no twin."""

    def pre_tokenize(self, pretok) -> None:
        pretok.split(lambda _, piece: piece.split(" ", "removed"))


def test_a_tokenizer_with_python_parts_keeps_the_library(tokenizer):
    from tokenizers.pre_tokenizers import PreTokenizer

    variant = _variant(tokenizer, lambda spec: None)
    variant.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(_SplitOnSpaces())
    assert twin_of(variant) is None
    assert encode_texts(variant, ["two words"]) == library_ids(variant, ["two words"])
