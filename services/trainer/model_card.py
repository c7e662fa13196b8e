"""The README.md of an exported model: what it is, how to load it, what made it, and how it was judged.

Everything in it comes from records (the registry, the data service, the eval service); a part that could
not be found says so, so a reader can tell "not evaluated" from "evaluated and left out".
"""

import json
from dataclasses import dataclass
from typing import Any

from services.trainer.export_evidence import DataLineage, Evaluation, EvaluationLookup
from services.trainer.registry import BASE, ModelRecord

# The metrics a card lists first, in this order; any others the run measured follow alphabetically.
LEADING_METRICS = ("token_f1", "exact_match", "rouge_l", "bleu", "refusal_rate", "wrong_refusal_rate")
TRAINING_METRICS = ("train_loss", "validation_loss", "best_validation_loss", "steps", "tokens_seen")


@dataclass(frozen=True)
class CardFacts:
    model: ModelRecord
    export_format: str  # merged | adapter
    dtype: str  # the exported weights' dtype, e.g. bfloat16
    model_max_length: int
    base: ModelRecord | None  # None when the exported model is a base model itself
    lineage: DataLineage | None  # None for a base model
    evaluation: EvaluationLookup


def render(facts: CardFacts) -> str:
    model = facts.model
    sections = [
        _front_matter(facts),
        f"# {model.name}\n\n{_summary(facts)}",
        _model_table(facts),
        _how_to_load(facts),
    ]
    if facts.lineage is not None:
        sections += [_data_section(facts.lineage), _hyperparameter_section(model), _training_section(model)]
    sections.append(_evaluation_section(facts.evaluation))
    sections.append(_prompt_section(model))
    return "\n\n".join(sections) + "\n"


def _front_matter(facts: CardFacts) -> str:
    library = "peft" if facts.export_format == "adapter" else "transformers"
    tags = ["fine-tuned", "lora"] if facts.base is not None else ["base-model"]
    lines = ["---", f"library_name: {library}", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    if facts.base is not None and "/" in facts.base.name:
        lines.append(f"base_model: {facts.base.name}")  # a hub id; a registry name means nothing to the hub
    lines.append("---")
    return "\n".join(lines)


def _summary(facts: CardFacts) -> str:
    if facts.base is None:
        return "A base model from the fine-tuning platform's registry, exported as a transformers folder."
    what = "a PEFT LoRA adapter" if facts.export_format == "adapter" else "LoRA weights merged into the base"
    return (
        f"Fine-tuned from `{facts.base.name}` by training job `{facts.model.lineage.get('job_id', '?')}` "
        f"of the fine-tuning platform; this folder holds {what}."
    )


def _model_table(facts: CardFacts) -> str:
    model = facts.model
    rows = [
        ("registry id", model.id),
        ("registry name", model.name),
        ("aliases", ", ".join(model.aliases) or "none"),
        ("format", facts.export_format),
        ("weights dtype", facts.dtype),
        (
            "parameters",
            f"{model.parameters:,}" + (" (trainable, in the adapter)" if _is_adapter(facts) else ""),
        ),
        ("model_max_length", str(facts.model_max_length)),
        ("end-of-turn token", f"`{model.eos_token}`"),
        ("artifact sha256", model.artifact.sha256),
    ]
    if facts.base is not None:
        source = _portable_source(facts.base.lineage.get("source", ""))
        rows.append(
            ("base model", f"`{facts.base.name}` ({facts.base.id})" + (f", from {source}" if source else ""))
        )
        rows.append(("training job", model.lineage.get("job_id", "")))
        rows.append(("code version", model.lineage.get("code_version", "")))
    else:
        rows.append(("source", _portable_source(model.lineage.get("source", ""))))
    return "## Model\n\n" + _table(("field", "value"), rows)


def _how_to_load(facts: CardFacts) -> str:
    if _is_adapter(facts):
        base_name = facts.base.name if facts.base is not None else "BASE"
        code = (
            "from peft import PeftModel\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'# adapter_config.json names the base as "{base_name}": load that model from wherever you keep it.\n'
            f'base = AutoModelForCausalLM.from_pretrained("path/to/{base_name}")\n'
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")'
        )
    else:
        code = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")\n'
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")'
        )
    usage = (
        'messages = [{"role": "user", "content": "Your question"}]\n'
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", '
        "return_dict=True)\n"
        "output = model.generate(**inputs, max_new_tokens=128)\n"
        'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))'
    )
    return f"## How to load\n\n```python\n{code}\n\n{usage}\n```"


def _data_section(lineage: DataLineage) -> str:
    lines = ["## Training data", ""]
    if lineage.dataset_id:
        lines.append(f"- dataset: `{lineage.dataset_name}` ({lineage.dataset_id})")
    lines.append(f"- prepared version: {lineage.prepared_version_id or 'not recorded'}")
    if lineage.dataset_id:
        template = lineage.template if lineage.template != "unspecified" else "the base model's chat template"
        lines.append(
            f"- prompt template: {template}; max sequence length: {lineage.max_seq_len or 'default'}"
        )
        splits = ", ".join(f"{name} {count}" for name, count in lineage.split_examples.items())
        lines.append(f"- examples per split: {splits}")
        lines.append(f"- refusal rows: {lineage.refusal_rows}")
    if lineage.missing:
        lines.append(f"- not described further: {lineage.missing}")
    return "\n".join(lines)


def _hyperparameter_section(model: ModelRecord) -> str:
    stored = model.lineage.get("hyperparameters_json", "")
    if not stored:
        return "## Hyperparameters\n\nNot recorded in the registry."
    values: dict[str, Any] = json.loads(stored)
    rows = [(name, _value(value)) for name, value in values.items()]
    return "## Hyperparameters\n\n" + _table(("name", "value"), rows)


def _training_section(model: ModelRecord) -> str:
    names = [n for n in TRAINING_METRICS if n in model.metrics]
    names += sorted(set(model.metrics) - set(TRAINING_METRICS))
    if not names:
        return "## Training results\n\nThe registry holds no training metrics for this model."
    rows = [(name, _number(model.metrics[name])) for name in names]
    return "## Training results\n\n" + _table(("metric", "value"), rows)


def _evaluation_section(lookup: EvaluationLookup) -> str:
    evaluation = lookup.evaluation
    if evaluation is None:
        return (
            "## Evaluation\n\nNo evaluation evidence is included: "
            f"{lookup.note}. The training results above are what the registry records."
        )
    data = ", ".join(f"{k} {v}" for k, v in evaluation.data.items()) or "not recorded"
    lines = [
        "## Evaluation",
        "",
        f"Run `{evaluation.run_id}` ({evaluation.finished_at}), on {data}, against the baseline "
        f"`{evaluation.baseline}`; this model is `{evaluation.label}` there.",
        "",
        f"**Verdict: {evaluation.verdict}**",
        "",
    ]
    lines += [f"- {reason}" for reason in evaluation.reasons]
    rule = ", ".join(f"{k} {_value(v)}" for k, v in evaluation.rule.items())
    if rule:
        lines += ["", f"Promotion rule: {rule}."]
    lines += [
        "",
        "Means with 95% intervals; the delta is this model minus the baseline, paired per example.",
        "",
    ]
    lines.append(_table(("metric", "this model", "baseline", "delta", "n"), _metric_rows(evaluation)))
    return "\n".join(lines)


def _metric_rows(evaluation: Evaluation) -> list[tuple[str, ...]]:
    names = [n for n in LEADING_METRICS if n in evaluation.summaries]
    names += sorted(set(evaluation.summaries) - set(LEADING_METRICS))
    rows = []
    for name in names:
        summary = evaluation.summaries[name]
        delta = evaluation.comparisons.get(name, {}).get("delta")
        rows.append(
            (
                name,
                _interval(summary),
                _interval(evaluation.baseline_summaries.get(name)),
                _interval(delta, signed=True),
                str(summary.get("n", "")),
            )
        )
    return rows


def _prompt_section(model: ModelRecord) -> str:
    return (
        "## Prompt format\n\n"
        "The tokenizer carries the chat template the model was trained with (`chat_template.jinja`); "
        "use `tokenizer.apply_chat_template`. "
        f"Generation stops at the template's end-of-turn token `{model.eos_token}` "
        "(`generation_config.json`)."
    )


def _portable_source(source: str) -> str:
    """Where a base model came from, unless that is a folder on the trainer's host: such a path says nothing
    on another machine (and tells it about this one)."""
    return "a local folder on the trainer's host" if source.startswith("/") else source


def _is_adapter(facts: CardFacts) -> bool:
    return facts.export_format == "adapter" and facts.model.kind != BASE


def _interval(summary: dict[str, Any] | None, signed: bool = False) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    sign = "+" if signed else ""
    text = f"{summary['mean']:{sign}.4f}"
    low, high = summary.get("low"), summary.get("high")
    if low is not None and high is not None:
        text += f" [{low:{sign}.4f}, {high:{sign}.4f}]"
    return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "-" if value is None else str(value)  # None: not set, e.g. epochs when max_steps decides


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
