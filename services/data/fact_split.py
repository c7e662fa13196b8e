"""Splitting by phrasing within a fact: train on some phrasings of a fact, hold out the others.

Rows that share a fact id (GenerateDataset writes one per fact) state one fact in different words. A split
that keeps near duplicates together puts all of a fact's phrasings in one split, so a test row never asks a
trained fact in new words and the test measures recall of seen text or of unseen facts, not of facts. Here a
fact's phrasings are spread instead: most go to train, at least one is held out (to test, and to validation
too when its share allows), chosen by the seed. A fact with room for one held-out phrasing only (three
phrasings: two trained, one held out) gives it to test or to validation; across such facts the held-out
phrasings go to validation in the share validation / (validation + test), so a validation split that was
asked for is not left empty (the trainer's validation loss then measures new words for trained facts).
Rows that must stay together still do: exact duplicates (whatever their
facts; facts sharing a row are split as one), and near duplicates among rows without a fact id. Near
duplicates among rows with fact ids are phrasings by design (within a fact) or were removed at generation
(across facts, services/data/documents/checks.py), so they do not join groups here.
Facts with one phrasing, and rows without a fact id, follow the normal split (splitting.assign_splits).
"""

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.data.duplicates import DuplicateGroup, line_groups
from services.data.splitting import assign_splits

HELD_OUT_SPLITS = ("test", "validation")  # the order held-out phrasings are dealt in


@dataclass(frozen=True)
class FactLineGroups:
    line_group: dict[int, int]  # line -> the smallest line it must share a split with
    cross_fact_near_groups: int  # near-duplicate groups spanning different facts, not kept together


@dataclass
class FactPhrasingSplit:
    assignment: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def note(self) -> str:
        """One line for the prepared version's warnings: what this split did."""
        s = self.summary
        held = s["held_out_rows"]
        return (
            f"split by phrasing within a fact: {s['facts_split']} of {s['facts']} facts have several phrasings "
            f"and keep {s['trained_phrasing_rows']} rows in train, {held['test']} held out in test and "
            f"{held['validation']} in validation; {s['single_phrasing_facts']} single-phrasing facts and "
            f"{s['rows_without_fact']} rows without a fact id follow the normal split"
        )


def fact_line_groups(duplicates: Iterable[DuplicateGroup], fact_of_line: Mapping[int, str]) -> FactLineGroups:
    """The duplicate groups that still bind rows to one split when a fact's phrasings are spread."""
    binding: list[DuplicateGroup] = []
    cross_fact = 0
    for group in duplicates:
        if group.exact:
            binding.append(group)
            continue
        facts = {fact_of_line[line] for line in group.lines if fact_of_line.get(line)}
        cross_fact += len(facts) > 1
        without_fact = [line for line in group.lines if not fact_of_line.get(line)]
        if len(without_fact) > 1:
            binding.append(DuplicateGroup(without_fact, exact=False, similarity=group.similarity))
    return FactLineGroups(line_groups(binding), cross_fact)


def held_out_counts(phrasings: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """How many of a fact's phrasings each held-out split gets: at least one in total (to test, or to
    validation when test has no share), never more than half, so train keeps most (and at least one)."""
    _, validation_fraction, test_fraction = fractions
    shares = {"test": test_fraction, "validation": validation_fraction}
    counts = {split: int(share * phrasings + 0.5) if share > 0 else 0 for split, share in shares.items()}
    first_held = next((split for split in HELD_OUT_SPLITS if shares[split] > 0), None)
    if first_held is None:
        return counts
    counts[first_held] = max(1, counts[first_held])
    limit = max(1, phrasings // 2)
    for split in reversed(HELD_OUT_SPLITS):  # validation gives way first
        while (
            counts[split] > 0 and sum(counts.values()) > limit and (split != first_held or counts[split] > 1)
        ):
            counts[split] -= 1
    return counts


def split_by_fact_phrasing(
    groups: Sequence[str], fact_ids: Sequence[str], fractions: tuple[float, float, float], seed: int
) -> FactPhrasingSplit:
    """Each example's split, given its group (rows that must share a split) and its fact id ("" for none).

    A fact's phrasings are its groups; facts that share a group are one fact here.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for index, group in enumerate(groups):
        members[group].append(index)
    cluster = _FactClusters()
    facts_of_group: dict[str, set[str]] = defaultdict(set)
    for index, fact in enumerate(fact_ids):
        if fact:
            facts_of_group[groups[index]].add(fact)
    for facts in facts_of_group.values():
        cluster.join(facts)
    phrasings: dict[str, list[str]] = defaultdict(list)  # fact cluster -> its groups
    for group, facts in facts_of_group.items():
        phrasings[cluster.root(next(iter(facts)))].append(group)
    assignment = [""] * len(groups)
    held_rows = dict.fromkeys(HELD_OUT_SPLITS, 0)
    trained_rows = 0
    spread: set[str] = set()
    one_held_out = _OneHeldOutDealer(fractions)
    for root in sorted(phrasings, key=lambda r: _order(seed, r)):
        fact_groups = phrasings[root]
        if len(fact_groups) < 2:
            continue
        spread.add(root)
        ordered = sorted(fact_groups, key=lambda g: _order(seed, g))
        counts = one_held_out.deal(held_out_counts(len(ordered), fractions))
        dealt = [split for split in HELD_OUT_SPLITS for _ in range(counts[split])]
        for position, group in enumerate(ordered):
            split = dealt[position] if position < len(dealt) else "train"
            for index in members[group]:
                assignment[index] = split
            if split == "train":
                trained_rows += len(members[group])
            else:
                held_rows[split] += len(members[group])
    rest = [index for index, split in enumerate(assignment) if not split]
    for index, split in zip(rest, assign_splits([groups[i] for i in rest], fractions, seed), strict=True):
        assignment[index] = split
    all_facts = {fact for fact in fact_ids if fact}
    return FactPhrasingSplit(
        assignment,
        {
            "mode": "fact_phrasing",
            "facts": len(all_facts),
            "facts_split": sum(1 for fact in all_facts if cluster.root(fact) in spread),
            "single_phrasing_facts": sum(1 for fact in all_facts if cluster.root(fact) not in spread),
            "rows_without_fact": sum(1 for fact in fact_ids if not fact),
            "trained_phrasing_rows": trained_rows,
            "held_out_rows": held_rows,
        },
    )


class _OneHeldOutDealer:
    """Sends the one held-out phrasing of successive facts to validation in its share of the held-out
    splits (validation / (validation + test)), to test otherwise, evenly spread over the facts."""

    def __init__(self, fractions: tuple[float, float, float]) -> None:
        _, validation, test = fractions
        self.validation_share = validation / (validation + test) if validation > 0 and test > 0 else 0.0
        self.dealt = 0
        self.to_validation = 0

    def deal(self, counts: dict[str, int]) -> dict[str, int]:
        if self.validation_share == 0 or counts != {"test": 1, "validation": 0}:
            return counts
        self.dealt += 1
        if int(self.dealt * self.validation_share) > self.to_validation:
            self.to_validation += 1
            return {"test": 0, "validation": 1}
        return counts


def _order(seed: int, group: str) -> str:
    # Salted apart from splitting.py's order, so which phrasing is held out does not follow which rows
    # the normal split sends to test.
    return hashlib.sha256(f"{seed}:phrasing:{group}".encode()).hexdigest()


class _FactClusters:
    """Facts joined when they share a group (an exact duplicate stated under two facts)."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def root(self, fact: str) -> str:
        self._parent.setdefault(fact, fact)
        while self._parent[fact] != fact:
            self._parent[fact] = self._parent[self._parent[fact]]
            fact = self._parent[fact]
        return fact

    def join(self, facts: Iterable[str]) -> None:
        roots = sorted({self.root(fact) for fact in facts})
        for other in roots[1:]:
            self._parent[other] = roots[0]
