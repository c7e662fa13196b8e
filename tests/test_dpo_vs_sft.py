"""benchmarks/dpo_vs_sft.py's fairness, without training: test answers are never trained on, and the DPO
pairs never reject an answer the evaluator counts as a refusal. Its --smoke run (three tiny trainings, about
a minute on 2 CPU cores) stays out of the suite."""

from benchmarks import dpo_vs_sft
from ftcommon.refusal_detection import RefusalDetector
from services.data.refusals import refusal_answer


def test_held_out_answers_are_never_trained_on():
    train, test = dpo_vs_sft.load_data("sample", test_fraction=0.15, seed=13)
    assert test and train
    assert not {answer for _, answer in test} & {answer for _, answer in train}


def test_pairs_skip_own_answers_that_already_refuse():
    refusal = refusal_answer("the fine-tuning platform")
    pairs = dpo_vs_sft.preference_pairs(
        off_topic=["Who built Stonehenge?", "How do I iron a shirt?", "Why is the sky blue?"],
        own_answers=[
            "Let's keep the discussion relevant to the platform!",
            "Use a hot iron on the collar first.",
            "",
        ],
        in_domain=[("Which port does the gateway use?", "Port 8000.")],
        refusal=refusal,
        detector=RefusalDetector(refusal),
    )
    assert pairs == [
        ("How do I iron a shirt?", refusal, "Use a hot iron on the collar first."),
        ("Which port does the gateway use?", "Port 8000.", refusal),
    ]
