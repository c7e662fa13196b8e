"""A deterministic train/validation/test split by seed that never puts one duplicate group in two splits."""

import hashlib
import random
from collections import defaultdict
from collections.abc import Sequence

SPLITS = ("train", "validation", "test")


def _order(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_splits(groups: Sequence[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """The split of each example, given each example's group key.

    Groups are ordered by a seeded hash, then test and validation are filled to their share of the
    rows (at least one group each when their fraction is positive and the data allows it), and the
    rest is train. Train always gets at least one group.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    ordered = sorted(members, key=lambda g: _order(seed, g))
    total = len(groups)
    _, validation_fraction, test_fraction = fractions
    targets = {
        "test": max(1, round(test_fraction * total)) if test_fraction > 0 else 0,
        "validation": max(1, round(validation_fraction * total)) if validation_fraction > 0 else 0,
    }
    filled = {"train": 0, "validation": 0, "test": 0}
    assignment = [""] * total
    for position, group in enumerate(ordered):
        groups_left = len(ordered) - position
        split = "train"
        if not (filled["train"] == 0 and groups_left == 1):
            split = next((s for s in ("test", "validation") if filled[s] < targets[s]), "train")
        for index in members[group]:
            assignment[index] = split
        filled[split] += len(members[group])
    return assignment


def shuffled(indexes: list[int], seed: int) -> list[int]:
    result = list(indexes)
    random.Random(seed).shuffle(result)
    return result
