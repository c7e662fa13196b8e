"""A byte-level BPE tokenizer's twin in tiktoken: the same ids, about twice as fast.

100,000 chat-templated lamini_docs rows (570 characters each) take the tokenizers library 12.5-13.5 s
on both of these 2 cores and tiktoken 4.6-7.4 s on one (a second thread does not help it: it takes the
GIL back after every text). Both cut text at
the added tokens first, split each piece with GPT-2's pattern and merge each part's bytes pair by
pair, lowest rank first, leftmost first among equals. They differ in how a pair is ranked: the
tokenizers library by the merge's line in the merges list (a pair not listed never merges), tiktoken by
the id of the token the two make (any two parts that make a vocabulary token merge). These agree when
 - every merge makes a token of its own, with ids rising in merge order, as a BPE trainer writes them;
 - every such token, encoded alone by the library, is that one token (as the trainer made it).
Then two adjacent parts that make a token T cover T's bytes, every merge so far inside them is one that
encoding T alone makes too, and T alone ends as [T]: so those two parts are the merge listed for T, and
both rank every candidate pair in the same order. Both regex engines agree on the pattern's classes
(letters, digits, whitespace) for characters whose Unicode properties have not changed in decades; a
text with any other character (the engines' Unicode versions differ) is left to the library
(`services.data.tokenization.encode_texts` sends it there).

A twin is built only for a tokenizer with no normaliser, the ByteLevel pre-tokenizer with GPT-2's pattern
and no prefix space, a plain BPE model, and added tokens matched on the raw text of
which none starts another; for anything else `twin_of` returns None and the library does the work.
"""

import functools
import hashlib
import json
import re
import weakref
from typing import Any

import numpy

# What the tokenizers library's ByteLevel pre-tokenizer splits with (use_regex=true).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# ASCII, Latin-1, Latin Extended-A and -B, General Punctuation (curly quotes, dashes, the Unicode
# spaces): every character there was assigned by Unicode 6.3 (2013), older than either engine's tables,
# so both class them alike.
_STABLE_BLOCKS = ((0x00, 0x24F), (0x2000, 0x206F))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that stands for it in the vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in printable]
    return {byte: chr(byte) for byte in printable} | {byte: chr(256 + i) for i, byte in enumerate(others)}


def _text_pattern(known_bytes: set[int]) -> re.Pattern[str]:
    """Texts the twin encodes: characters of the stable blocks whose UTF-8 bytes are all in the vocabulary
    (the library drops a byte it has no token for; tiktoken cannot)."""
    ranges: list[tuple[int, int]] = []
    for first, last in _STABLE_BLOCKS:
        for point in range(first, last + 1):
            if not set(chr(point).encode()) <= known_bytes:
                continue
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1] = (ranges[-1][0], point)
            else:
                ranges.append((point, point))
    return re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges) + "]*")


class TiktokenTwin:
    """Encodes like the tokenizer it was built from (see the module's docstring) the texts whose characters
    both regex engines agree on."""

    def __init__(self, encoding: Any, texts: re.Pattern[str], separator: str | None) -> None:
        """`separator`: a special token no ordinary text encodes to (see `_encode_joined`), or None."""
        self._encoding = encoding
        self._texts = texts
        self._separator = separator
        self._separator_id = encoding.encode_single_token(separator) if separator is not None else None

    def encode(self, texts: list[str], special_free: bool = False) -> list[list[int] | None]:
        """Each text's ids, or None for a text the library must encode. `special_free`: no text holds a
        special token (pieces cut at them), so they are encoded together in one call (`_encode_joined`)."""
        fits = self._texts.fullmatch
        if not special_free or self._separator is None:
            return [self._encode_with_special(text) if fits(text) else None for text in texts]
        fitting = [index for index, text in enumerate(texts) if fits(text)]
        ids: list[list[int] | None] = [None] * len(texts)
        for index, encoded in zip(fitting, self._encode_joined([texts[i] for i in fitting]), strict=True):
            ids[index] = encoded
        return ids

    def _encode_joined(self, texts: list[str]) -> list[list[int]]:
        """The texts' ids from one encoding of the texts joined by the separator: tiktoken encodes the text
        between two special tokens on its own, exactly as that text alone, so cutting the ids at the
        separator's gives each text's. One call instead of one per text (the Python call and each result's
        list cost 40% of the time: 21,000 pieces 0.26 s against 0.43 s)."""
        if not texts:
            return []
        joined = self._encoding.encode_to_numpy(
            self._separator.join(texts), allowed_special={self._separator}, disallowed_special=()
        )
        ends = numpy.flatnonzero(joined == self._separator_id).tolist()
        if len(ends) != len(texts) - 1:
            raise ValueError("a text given as special-free holds the separator special token")
        flat = joined.tolist()
        return list(map(flat.__getitem__, map(slice, [0, *(end + 1 for end in ends)], [*ends, len(flat)])))

    def _encode_with_special(self, text: str) -> list[int]:
        return self._encoding.encode(text, allowed_special="all")


_twins: "weakref.WeakKeyDictionary[Any, TiktokenTwin | None]" = weakref.WeakKeyDictionary()


def twin_of(tokenizer: Any) -> TiktokenTwin | None:
    """The tokenizer's tiktoken twin, or None when it is not a byte-level BPE tokenizer tiktoken can match.
    Looked up once per tokenizer object (serialising the tokenizer to find its twin takes 30 ms)."""
    if tokenizer in _twins:
        return _twins[tokenizer]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        built = _encoding_for(backend.to_str()) if backend is not None else None
    except Exception:  # tokenizers raises a bare Exception for Python-side parts it cannot serialise
        built = None
    twin = TiktokenTwin(*built) if built is not None else None
    _twins[tokenizer] = twin
    return twin


def adopt_twin(tokenizer: Any, twin: TiktokenTwin | None) -> None:
    """Gives a tokenizer the twin (or None) found for another loaded from the same files: a process handed its
    parent's twin unpickles it in 40 ms instead of building it in 0.4 s."""
    _twins[tokenizer] = twin


@functools.lru_cache(maxsize=4)
def _encoding_for(tokenizer_json: str) -> tuple[Any, re.Pattern[str], str | None] | None:
    """The tiktoken Encoding for a tokenizer.json, the texts it encodes alike and a special token to join
    texts with, or None; built once per tokenizer."""
    spec = json.loads(tokenizer_json)
    model, pre_tokenizer = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if (
        spec.get("normalizer") is not None
        or pre_tokenizer.get("type") != "ByteLevel"
        or pre_tokenizer.get("add_prefix_space")
        or not pre_tokenizer.get("use_regex", True)
        or model.get("type") != "BPE"
        or model.get("dropout") is not None
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
        or model.get("byte_fallback")
        or model.get("ignore_merges")
    ):
        return None
    added = spec.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in added):
        return None
    specials = {t["content"]: t["id"] for t in added}
    if any(a != b and b.startswith(a) for a in specials for b in specials):
        return None  # tiktoken tries added tokens in no set order, the library longest first
    vocab: dict[str, int] = model["vocab"]
    to_char = _bytes_to_unicode()
    to_byte = {char: byte for byte, char in to_char.items()}
    ranks = {bytes([byte]): vocab[char] for byte, char in to_char.items() if char in vocab}
    last_id = -1
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        token = left + right
        if token not in vocab or vocab[token] <= last_id or not set(token) <= to_byte.keys():
            return None
        last_id = vocab[token]
        ranks[bytes(to_byte[char] for char in token)] = last_id
    if len(ranks) != len({*ranks.values()}):
        return None
    bpe = _library_bpe(tokenizer_json)
    if any(
        [t.id for t in bpe.tokenize(token)] != [vocab[token]] for token in _merged_tokens(model["merges"])
    ):
        return None
    import tiktoken

    name = "twin-" + hashlib.sha256(tokenizer_json.encode()).hexdigest()[:12]
    encoding = tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    # A separator's id must be no mergeable token's, or an ordinary text could encode to it.
    separator = next((t for t, id_ in specials.items() if id_ not in ranks.values()), None)
    texts = _text_pattern({byte for (byte,) in (key for key in ranks if len(key) == 1)})
    return encoding, texts, separator


def _merged_tokens(merges: list[Any]) -> list[str]:
    return ["".join(merge.split(" ") if isinstance(merge, str) else merge) for merge in merges]


def _library_bpe(tokenizer_json: str) -> Any:
    """The tokenizers library's own BPE model of this tokenizer, to encode tokens alone with."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json).model
