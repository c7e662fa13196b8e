"""Rules a conversation must pass to be trained on: known roles in a trainable order, no empty turns."""

from services.data.records import Conversation, Rejection

ROLES = ("system", "user", "assistant")


def check_conversation(conversation: Conversation) -> Rejection | None:
    """The first rule the conversation breaks, or None."""
    messages, fields, line = conversation.messages, conversation.fields, conversation.line

    def field_of(index: int) -> str:
        return fields[index] if index < len(fields) else f"messages[{index}]"

    for index, message in enumerate(messages):
        if message["role"] not in ROLES:
            return Rejection(line, f"bad role order: unknown role '{message['role']}'", field_of(index))
    # An empty answer is named before an empty question: the answer is what training learns.
    by_priority = sorted(range(len(messages)), key=lambda i: messages[i]["role"] != "assistant")
    for index in by_priority:
        if not messages[index]["content"]:
            what = {"assistant": "answer", "user": "question", "system": "system prompt"}[
                messages[index]["role"]
            ]
            return Rejection(line, f"empty {what}", field_of(index))
    return _check_order(conversation)


def _check_order(conversation: Conversation) -> Rejection | None:
    roles = [m["role"] for m in conversation.messages]
    line = conversation.line
    if "system" in roles[1:]:
        return Rejection(line, "bad role order: a system message may only come first", "messages")
    turns = roles[1:] if roles[0] == "system" else roles
    if not turns or turns[0] != "user":
        return Rejection(line, "bad role order: the conversation must start with a user message", "messages")
    for previous, current in zip(turns, turns[1:], strict=False):
        if previous == current:
            return Rejection(line, f"bad role order: two {current} messages in a row", "messages")
    if turns[-1] != "assistant":
        return Rejection(line, "bad role order: the last message must be the assistant's answer", "messages")
    return None


def is_empty_field_rejection(rejection: Rejection) -> bool:
    return rejection.reason.startswith("empty ") or rejection.reason == "missing field"
