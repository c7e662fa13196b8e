"""Conversations -> (input_ids, labels), many at a time.

The result equals ftcommon.chat_format.training_example for every conversation (a test holds it to
that): the same template rendering, the same tokens, labels on every assistant turn up to and
including the end-of-turn token. It differs only in speed: jinja renders each conversation shape once
where the template allows (template_skeletons.py), each distinct text is tokenized once, and a byte-level
BPE tokenizer's tiktoken twin (tiktoken_twin.py; others: the tokenizer's Rust batch encoder) does the work.

Most tokenizers cut text at their special tokens before anything else and tokenize the pieces between them
on their own. Rendered conversations repeat much of their text between special tokens: a prompt, or a
conversation through an earlier turn, is a prefix of the whole conversation; every row holds the same system
prompt; many questions share an answer. So each text is cut at its special tokens and only the distinct
pieces are tokenized (100,000 lamini_docs rows with distinct questions: 10.5 million characters of pieces
against 57 million of whole texts, and prompts add 43% to those). Tokenizers whose special tokens strip
whitespace, or that normalise text first, tokenize every text whole.
"""

import operator
import re
from collections.abc import Sequence
from functools import reduce
from itertools import chain
from typing import Any

from services.data.records import Message
from services.data.template_skeletons import render_conversations
from services.data.tiktoken_twin import twin_of

IGNORE_INDEX = -100

# A message's (role, content), and its weight: 0 on an assistant turn kept as context and not trained on
# (OpenAI's chat format), else 1. itemgetter and methodcaller build them in C (a generator of tuples cost
# ~0.5 s per 100,000 rows).
_role_and_content = operator.itemgetter("role", "content")
_weight_of = operator.methodcaller("get", "weight", 1)
# What makes two conversations encode alike: each message's (role, content), and each message's weight.
ConversationKey = tuple[tuple[tuple[str, str], ...], tuple[int, ...]]
# A split text's pieces between special tokens: its even places (re.split with a capturing group).
_pieces_of = operator.itemgetter(slice(0, None, 2))


def encode_texts(tokenizer: Any, texts: list[str], special_free: bool = False) -> list[list[int]]:
    """Each text's ids as the tokenizer gives them, with no special tokens added: by the tokenizer's tiktoken
    twin where it has one and the text suits it, else by the tokenizer. `special_free`: the caller knows no
    text holds a special token."""
    twin = twin_of(tokenizer)
    ids = twin.encode(texts, special_free) if twin is not None else [None] * len(texts)
    left = [index for index, encoded in enumerate(ids) if encoded is None]
    for index, encoded in zip(left, _library_ids(tokenizer, [texts[i] for i in left]), strict=True):
        ids[index] = encoded
    return ids  # type: ignore[return-value]  # every None was filled above


def _library_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # No offsets or masks are computed: only the ids (offsets cost 1.3-1.7x the time).
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def cuts_at_special_tokens(tokenizer: Any) -> bool:
    """Whether text before a special token tokenizes the same whatever follows it: the special tokens are
    matched on the raw text (no normaliser) and take no whitespace around them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return False
    return not any(t.lstrip or t.rstrip or t.single_word for t in tokenizer.added_tokens_decoder.values())


class PieceIds:
    """Ids of the pieces between special tokens that the previous batch of a prepare encoded, for the next
    batch to take instead of encoding them again (one tokenizer's). Batches of a data set share pieces:
    the system prompt, answers shared by many questions (100,000 lamini_docs rows with distinct questions
    hold 28.5 million characters of pieces distinct within their batches of 2,048 rows but 10.5 million
    over all, and neighbouring batches share nearly all of the difference). Only one batch is kept: a
    cache of every batch grew to millions of ids where no piece repeats and made that case 8% slower."""

    def __init__(self) -> None:
        self._previous: dict[str, list[int]] = {}

    def of(
        self, tokenizer: Any, pieces: list[str], special_ids: dict[str, list[int]]
    ) -> dict[str, list[int]]:
        """A map from each of `pieces` and each special token to its ids."""
        previous = self._previous
        current = {piece: previous[piece] for piece in pieces if piece in previous}
        new = [piece for piece in pieces if piece not in current]
        current.update(zip(new, encode_texts(tokenizer, new, special_free=True), strict=True))
        current.update(special_ids)  # never a piece: pieces hold no special token
        self._previous = current
        return current


def encode_rendered(tokenizer: Any, texts: list[str], pieces: PieceIds | None = None) -> list[list[int]]:
    """Each text's ids as the tokenizer gives it on its own, no special tokens added. A tokenizer that cuts
    text at its special tokens first (cuts_at_special_tokens) has each text cut there here too, and every
    distinct piece between special tokens tokenized once (see the module's docstring), or not again where
    `pieces` (the same tokenizer's) already holds it."""
    special_ids = {token.content: [id_] for id_, token in tokenizer.added_tokens_decoder.items()}
    if not special_ids or not cuts_at_special_tokens(tokenizer):
        return encode_texts(tokenizer, texts)
    # Leftmost, longest first, as the tokenizer matches them; the group keeps the tokens in split's result.
    contents = sorted(special_ids, key=len, reverse=True)
    splitter = re.compile("(" + "|".join(map(re.escape, contents)) + ")")
    parts = list(map(splitter.split, texts))  # pieces at even places, special tokens at odd ones
    distinct = list(dict.fromkeys(chain.from_iterable(map(_pieces_of, parts))))
    ids_of = (pieces if pieces is not None else PieceIds()).of(tokenizer, distinct, special_ids)
    # reduce(iadd) extends one new list by each piece's ids in C; a chain of the pieces copied id by id (2x).
    return [reduce(operator.iadd, map(ids_of.__getitem__, text_parts), []) for text_parts in parts]


def conversation_key(messages: Sequence[Message]) -> ConversationKey:
    """What makes two conversations encode alike (equal keys, equal examples)."""
    return tuple(map(_role_and_content, messages)), tuple(map(_weight_of, messages))


def training_examples(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    end_of_turn: str,
    chat_template: str,
    pieces: PieceIds | None = None,
) -> list[tuple[list[int], list[int]]]:
    """One (input_ids, labels) per conversation. Equal conversations share the same two lists (callers
    copy before changing them): a data set with many exact duplicates is tokenized once per distinct row.
    `pieces`: pieces encoded by earlier calls for the same tokenizer (see PieceIds)."""
    keys = list(map(conversation_key, conversations))
    distinct = list(dict.fromkeys(keys))
    encoded = dict(
        zip(distinct, distinct_examples(tokenizer, distinct, end_of_turn, chat_template, pieces), strict=True)
    )
    return [encoded[key] for key in keys]


def distinct_examples(
    tokenizer: Any,
    conversations: list[ConversationKey],
    end_of_turn: str,
    chat_template: str,
    pieces: PieceIds | None = None,
) -> list[tuple[list[int], list[int]]]:
    """training_examples for conversations known to be distinct (given by their keys), such as prepare's
    rows: one example each, without looking for duplicates again (hashing every key twice more cost ~4% of
    prepare's encoding)."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    # Every rendering a conversation needs: the whole of it, and around each assistant turn the
    # prompt before it (with the generation header) and the conversation through it; for the last
    # turn that is the whole conversation, rendered once. A turn of weight 0 is neither.
    full_parts = [[{"role": r, "content": c} for r, c in messages] for messages, _ in conversations]
    prompt_parts: list[list[Message]] = []
    through_parts: list[list[Message]] = []
    turns: list[list[tuple[int, int | None]]] = []  # per conversation: (prompt index, through index or None)
    for messages, (_, weights) in zip(full_parts, conversations, strict=True):
        spans: list[tuple[int, int | None]] = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant" or not weights[turn]:
                continue
            prompt_parts.append(messages[:turn])
            through = None
            if turn + 1 < len(messages):
                through_parts.append(messages[: turn + 1])
                through = len(through_parts) - 1
            spans.append((len(prompt_parts) - 1, through))
        turns.append(spans)
    full_texts = render_conversations(tokenizer, full_parts, chat_template, generation=False)
    prompt_texts = render_conversations(tokenizer, prompt_parts, chat_template, generation=True)
    through_texts = render_conversations(tokenizer, through_parts, chat_template, generation=False)
    ids = encode_rendered(tokenizer, [*full_texts, *prompt_texts, *through_texts], pieces)
    full_ids, prompt_ids = ids[: len(full_texts)], ids[len(full_texts) : len(full_texts) + len(prompt_texts)]
    through_ids = ids[len(full_texts) + len(prompt_texts) :]
    examples = []
    for full, spans in zip(full_ids, turns, strict=True):
        labels = [IGNORE_INDEX] * len(full)
        for prompt_index, through_index in spans:
            prompt = prompt_ids[prompt_index]
            start = len(prompt)
            end = len(full) if through_index is None else len(through_ids[through_index])
            if full[:start] != prompt:
                raise ValueError("the chat template does not render conversations as prefixes of each other")
            # The answer's ids are labelled through its end-of-turn token: one search, one copy.
            try:
                stop = full.index(end_of_turn_id, start, end) + 1
            except ValueError:
                stop = end
            labels[start:stop] = full[start:stop]
        examples.append((full, labels))
    return examples


def preference_examples(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    rejected: Sequence[str],
    end_of_turn: str,
    chat_template: str,
    pieces: PieceIds | None = None,
) -> list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]:
    """One ((chosen ids, labels), (rejected ids, labels)) per pair. A pair is a conversation whose last
    message is the chosen answer, and the rejected answer to put in its place. Labels cover only that last
    answer, through its end-of-turn token: every earlier turn is the prompt both answers share. `pieces`: as
    training_examples'."""
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    plain = [[{"role": m["role"], "content": m["content"]} for m in c] for c in conversations]
    prompts = [messages[:-1] for messages in plain]
    with_rejected = [
        [*prompt, {"role": "assistant", "content": answer}]
        for prompt, answer in zip(prompts, rejected, strict=True)
    ]
    prompt_texts = render_conversations(tokenizer, prompts, chat_template, generation=True)
    chosen_texts = render_conversations(tokenizer, plain, chat_template, generation=False)
    rejected_texts = render_conversations(tokenizer, with_rejected, chat_template, generation=False)
    ids = encode_rendered(tokenizer, [*prompt_texts, *chosen_texts, *rejected_texts], pieces)
    count = len(prompt_texts)
    prompt_ids, chosen_ids, rejected_ids = ids[:count], ids[count : 2 * count], ids[2 * count :]

    def answer_labelled(prompt: list[int], full: list[int]) -> tuple[list[int], list[int]]:
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template does not render conversations as prefixes of each other")
        answer = full[len(prompt) :]
        stop = answer.index(end_of_turn_id) + 1 if end_of_turn_id in answer else len(answer)
        labels = [IGNORE_INDEX] * len(prompt) + answer[:stop] + [IGNORE_INDEX] * (len(answer) - stop)
        return full, labels

    return [
        (answer_labelled(prompt, chosen), answer_labelled(prompt, rejected))
        for prompt, chosen, rejected in zip(prompt_ids, chosen_ids, rejected_ids, strict=True)
    ]
