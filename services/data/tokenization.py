"""Conversations -> (input_ids, labels), many at a time.

The result equals ftcommon.chat_format.training_example for every conversation (a test holds it to
that): the same template rendering, the same tokens, labels on every assistant turn up to and
including the end-of-turn token. It differs only in speed: jinja renders each conversation shape once
where the template allows (template_skeletons.py), each distinct text is tokenized once, and a byte-level
BPE tokenizer's tiktoken twin (tiktoken_twin.py; others: the tokenizer's Rust batch encoder) does the work.

A prompt (or a conversation through an earlier turn) is a prefix of the whole conversation's text, and a
tokenizer cuts text at its special tokens before anything else and tokenizes the pieces on their own. So a
prefix's tokens are the whole text's tokens up to the last special token inside the prefix, followed by the
tokens of the short tail after it (for ChatML, "assistant\n"): only the distinct tails are tokenized, not
every prompt again (100,000 lamini_docs rows: prompts are 43% of the text). Tokenizers whose special tokens
strip whitespace, or that normalise text first, tokenize every prompt whole, as does a prefix with no
special token (Alpaca's template has none).
"""

import operator
import re
from collections.abc import Sequence
from typing import Any

from services.data.records import Message
from services.data.template_skeletons import render_conversations
from services.data.tiktoken_twin import twin_of

IGNORE_INDEX = -100

# A message's (role, content): what makes two conversations tokenize alike. itemgetter builds the pair in C
# (a generator of tuples cost ~0.5 s per 100,000 rows).
role_and_content = operator.itemgetter("role", "content")


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Each text's ids as the tokenizer gives them, with no special tokens added: by the tokenizer's tiktoken
    twin where it has one and the text suits it, else by the tokenizer."""
    twin = twin_of(tokenizer)
    ids = twin.encode(texts) if twin is not None else [None] * len(texts)
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


def encode_with_prefixes(
    tokenizer: Any, texts: list[str], prefixes: list[tuple[int, str]]
) -> tuple[list[list[int]], list[list[int]]]:
    """The ids of `texts`, and of each prefix (the index of the text it starts, its text), each as the
    tokenizer gives it on its own (see the module's docstring for how prefixes are cut)."""
    if not cuts_at_special_tokens(tokenizer):
        ids = encode_texts(tokenizer, [*texts, *(prefix for _, prefix in prefixes)])
        return ids[: len(texts)], ids[len(texts) :]
    text_ids = encode_texts(tokenizer, texts)
    special = _SpecialTokens(tokenizer)
    heads: list[list[int]] = []
    tails: list[str] = []
    for index, prefix in prefixes:
        # A template that does not render prefixes gets its prompts tokenized whole, and the callers' check
        # that a prompt's ids start the conversation's names the template.
        cut = special.cut(text_ids[index], prefix) if texts[index].startswith(prefix) else None
        heads.append(text_ids[index][: cut[0]] if cut else [])
        tails.append(prefix[cut[1] :] if cut else prefix)
    distinct_tails = list(dict.fromkeys(tails))
    tail_ids = dict(zip(distinct_tails, encode_texts(tokenizer, distinct_tails), strict=True))
    return text_ids, [head + tail_ids[tail] for head, tail in zip(heads, tails, strict=True)]


class _SpecialTokens:
    """Where a text's special tokens are, found as the tokenizer finds them: the leftmost, longest first."""

    def __init__(self, tokenizer: Any) -> None:
        self.id_of = {token.content: id_ for id_, token in tokenizer.added_tokens_decoder.items()}
        self.ids = frozenset(self.id_of.values())
        contents = sorted(self.id_of, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, contents)))

    def cut(self, ids: list[int], prefix: str) -> tuple[int, int] | None:
        """(tokens, characters) of `prefix` up to and including its last special token, the tokens counted
        in `ids`, the ids of a text `prefix` starts; None when the prefix has no special token (or the ids
        disagree with the text about it, which a tokenizer cutting at its special tokens never does)."""
        matches = list(self.pattern.finditer(prefix))
        if not matches:
            return None
        # Each match's id is looked up in C (list.index), and the ids skipped on the way checked to hold no
        # special token (set.isdisjoint): a Python loop over every id cost 0.6 s per 100,000 rows.
        position = -1
        for match in matches:
            try:
                found = ids.index(self.id_of[match.group()], position + 1)
            except ValueError:
                return None
            if not self.ids.isdisjoint(ids[position + 1 : found]):
                return None
            position = found
        return position + 1, matches[-1].end()


def training_examples(
    tokenizer: Any, conversations: Sequence[Sequence[Message]], end_of_turn: str, chat_template: str
) -> list[tuple[list[int], list[int]]]:
    """One (input_ids, labels) per conversation. Equal conversations share the same two lists (callers
    copy before changing them): a data set with many exact duplicates is tokenized once per distinct row."""
    keys = [tuple(map(role_and_content, conversation)) for conversation in conversations]
    distinct = list(dict.fromkeys(keys))
    encoded = dict(
        zip(distinct, _distinct_examples(tokenizer, distinct, end_of_turn, chat_template), strict=True)
    )
    return [encoded[key] for key in keys]


def _distinct_examples(
    tokenizer: Any, conversations: list[tuple[tuple[str, str], ...]], end_of_turn: str, chat_template: str
) -> list[tuple[list[int], list[int]]]:
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    # Every rendering a conversation needs: the whole of it, and around each assistant turn the
    # prompt before it (with the generation header) and the conversation through it; for the last
    # turn that is the whole conversation, rendered once.
    full_parts = [[{"role": r, "content": c} for r, c in conversation] for conversation in conversations]
    prompt_parts: list[list[Message]] = []
    through_parts: list[list[Message]] = []
    owners: list[int] = []  # the conversation each prompt, then each through-rendering, is a prefix of
    through_owners: list[int] = []
    turns: list[list[tuple[int, int | None]]] = []  # per conversation: (prompt index, through index or None)
    for owner, messages in enumerate(full_parts):
        spans: list[tuple[int, int | None]] = []
        for turn, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt_parts.append(messages[:turn])
            owners.append(owner)
            through = None
            if turn + 1 < len(messages):
                through_parts.append(messages[: turn + 1])
                through_owners.append(owner)
                through = len(through_parts) - 1
            spans.append((len(prompt_parts) - 1, through))
        turns.append(spans)
    full_texts = render_conversations(tokenizer, full_parts, chat_template, generation=False)
    prompt_texts = render_conversations(tokenizer, prompt_parts, chat_template, generation=True)
    through_texts = render_conversations(tokenizer, through_parts, chat_template, generation=False)
    full_ids, prefix_ids = encode_with_prefixes(
        tokenizer,
        full_texts,
        [*zip(owners, prompt_texts, strict=True), *zip(through_owners, through_texts, strict=True)],
    )
    prompt_ids, through_ids = prefix_ids[: len(prompt_texts)], prefix_ids[len(prompt_texts) :]
    examples = []
    for full, spans in zip(full_ids, turns, strict=True):
        labels = [IGNORE_INDEX] * len(full)
        for prompt_index, through_index in spans:
            prompt = prompt_ids[prompt_index]
            start = len(prompt)
            end = len(full) if through_index is None else len(through_ids[through_index])
            if full[:start] != prompt:
                raise ValueError("the chat template does not render conversations as prefixes of each other")
            segment = full[start:end]
            stop = segment.index(end_of_turn_id) + 1 if end_of_turn_id in segment else len(segment)
            labels[start : start + stop] = segment[:stop]
        examples.append((full, labels))
    return examples


def preference_examples(
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    rejected: Sequence[str],
    end_of_turn: str,
    chat_template: str,
) -> list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]:
    """One ((chosen ids, labels), (rejected ids, labels)) per pair. A pair is a conversation whose last
    message is the chosen answer, and the rejected answer to put in its place. Labels cover only that last
    answer, through its end-of-turn token: every earlier turn is the prompt both answers share."""
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
    answer_ids, prompt_ids = encode_with_prefixes(
        tokenizer, [*chosen_texts, *rejected_texts], list(enumerate(prompt_texts))
    )
    chosen_ids, rejected_ids = answer_ids[: len(chosen_texts)], answer_ids[len(chosen_texts) :]

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
