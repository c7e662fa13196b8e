"""The HTML report: one self-contained file (plots as inline base64 PNGs) rendered from the JSON twin."""

import base64
import html
import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402

# 0..1 metrics that share one bar chart; loss, perplexity and length have their own scales.
BAR_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "judge", "refusal_rate", "wrong_refusal_rate")
HISTOGRAM_METRICS = ("token_f1", "rouge_l")
EXAMPLE_ROWS_SHOWN = 200


def render_plots(report: dict[str, Any]) -> dict[str, str]:
    """Plot name -> PNG as a data URI. Plots without data are left out."""
    plots = {
        "metrics": _metric_bars(report),
        "histograms": _histograms(report),
        "errors": _error_bars(report),
    }
    if report.get("benchmarks"):
        plots["benchmarks"] = _benchmark_bars(report)
    if report.get("training_curves"):
        plots["training_loss"] = _training_curves(report)
    return plots


def render_html(report: dict[str, Any]) -> str:
    plots = render_plots(report)
    labels = [m["label"] for m in report["models"]]
    verdict = report["verdict"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation {_e(report['run_id'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Evaluation {_e(report['run_id'])}</h1>",
        f"<p>Baseline <b>{_e(report['baseline'])}</b>; models: {_e(', '.join(labels))}. Seed {report['seed']}.</p>",
        f"<h2>Verdict: <span class='{verdict.lower()}'>{verdict}</span></h2>",
        "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in report["verdict_reasons"]) + "</ul>",
        f"<p class='small'>Rule: {_e(json.dumps(report['rule']))}</p>",
        "<h2>Metrics (mean, bootstrap 95% interval)</h2>",
        "<p class='small'>Answer metrics cover the rows that expect a domain answer; off-topic rows and probes "
        "are scored by the refusal rate, in-domain rows and probes by the wrong-refusal rate, and rows whose "
        "reference is a stock reply shared by several rows by neither (see each row's flags in the JSON).</p>",
        _summary_table(report, labels),
        _img(plots, "metrics", "Metric means with 95% intervals"),
        "<h2>Candidate minus baseline (paired)</h2>",
        _comparison_table(report),
        _img(plots, "histograms", "Per-example score distributions"),
    ]
    if report.get("benchmarks"):
        parts += ["<h2>Benchmarks (log-likelihood multiple choice)</h2>", _benchmark_table(report)]
        parts.append(_img(plots, "benchmarks", "Benchmark scores"))
    parts += ["<h2>Error analysis</h2>", _img(plots, "errors", "Error categories"), _error_tables(report)]
    if report.get("training_curves"):
        parts += ["<h2>Training</h2>", _img(plots, "training_loss", "Training loss")]
    parts += ["<h2>Side by side</h2>", _example_table(report, labels), "</body></html>"]
    return "\n".join(parts)


# Plots


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _metric_bars(report: dict[str, Any]) -> str:
    labels = [m["label"] for m in report["models"]]
    metrics = [name for name in BAR_METRICS if any(name in report["summaries"][label] for label in labels)]
    figure, axes = plt.subplots(figsize=(max(6, 1.3 * len(metrics)), 3.6))
    width = 0.8 / max(1, len(labels))
    for offset, label in enumerate(labels):
        summary = report["summaries"][label]
        means = [_num(summary.get(name, {}).get("mean")) for name in metrics]
        lows = [_num(summary.get(name, {}).get("low")) for name in metrics]
        highs = [_num(summary.get(name, {}).get("high")) for name in metrics]
        errors = [
            [m - lo for m, lo in zip(means, lows, strict=True)],
            [h - m for m, h in zip(means, highs, strict=True)],
        ]
        positions = [i + offset * width for i in range(len(metrics))]
        axes.bar(positions, means, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(metrics))], metrics, rotation=20)
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize=8)
    return _png(figure)


def _histograms(report: dict[str, Any]) -> str:
    labels = [m["label"] for m in report["models"]]
    figure, axes = plt.subplots(1, len(HISTOGRAM_METRICS), figsize=(4.2 * len(HISTOGRAM_METRICS), 3.2))
    for axis, metric in zip(axes, HISTOGRAM_METRICS, strict=True):
        for label in labels:
            values = [row["answers"][label]["scores"][metric] for row in report["examples"]]
            axis.hist(values, bins=20, range=(0, 1), alpha=0.5, label=label)
        axis.set_title(metric)
        axis.set_xlabel("score per example")
    axes[0].legend(fontsize=8)
    return _png(figure)


def _error_bars(report: dict[str, Any]) -> str:
    labels = [m["label"] for m in report["models"]]
    categories = list(report["error_analysis"][labels[0]])
    figure, axes = plt.subplots(figsize=(7, 0.4 * len(categories) + 1.2))
    height = 0.8 / max(1, len(labels))
    for offset, label in enumerate(labels):
        counts = [report["error_analysis"][label][c]["count"] for c in categories]
        axes.barh([i + offset * height for i in range(len(categories))], counts, height, label=label)
    axes.set_yticks([i + height * (len(labels) - 1) / 2 for i in range(len(categories))], categories)
    axes.invert_yaxis()
    axes.set_xlabel("wrong answers")
    axes.legend(fontsize=8)
    return _png(figure)


def _benchmark_bars(report: dict[str, Any]) -> str:
    labels = list(report["benchmarks"])
    tasks = sorted({task for scores in report["benchmarks"].values() for task in scores})
    figure, axes = plt.subplots(figsize=(max(5, 1.4 * len(tasks)), 3.2))
    width = 0.8 / max(1, len(labels))
    for offset, label in enumerate(labels):
        values = [_num(report["benchmarks"][label].get(task)) for task in tasks]
        axes.bar([i + offset * width for i in range(len(tasks))], values, width, label=label)
    axes.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(tasks))], tasks)
    axes.set_ylim(0, 1)
    axes.legend(fontsize=8)
    return _png(figure)


def _training_curves(report: dict[str, Any]) -> str:
    figure, axes = plt.subplots(figsize=(6, 3.2))
    for label, curve in report["training_curves"].items():
        train = [(p["step"], p["loss"]) for p in curve if "loss" in p]
        validation = [(p["step"], p["validation_loss"]) for p in curve if "validation_loss" in p]
        if train:
            axes.plot(*zip(*train, strict=True), label=f"{label} train")
        if validation:
            axes.plot(*zip(*validation, strict=True), marker="o", label=f"{label} validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend(fontsize=8)
    return _png(figure)


# Tables


def _summary_table(report: dict[str, Any], labels: list[str]) -> str:
    metrics = sorted({name for label in labels for name in report["summaries"][label]})
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(label)}</th>" for label in labels) + "</tr>"
    rows = []
    for name in metrics:
        cells = []
        for label in labels:
            summary = report["summaries"][label].get(name)
            cells.append(f"<td>{_interval(summary)}</td>" if summary else "<td>-</td>")
        rows.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _comparison_table(report: dict[str, Any]) -> str:
    rows = []
    for candidate, metrics in report["comparisons"].items():
        for name, comparison in metrics.items():
            wtl = (
                f"{comparison['wins']}/{comparison['ties']}/{comparison['losses']}"
                if "wins" in comparison
                else "-"
            )
            rows.append(
                f"<tr><td>{_e(candidate)}</td><td>{_e(name)}</td><td>{_interval(comparison['delta'], signed=True)}</td>"
                f"<td>{comparison['p_value']:.3g}</td><td>{comparison['sign_test_p']:.3g}</td><td>{wtl}</td></tr>"
            )
    head = (
        "<tr><th>candidate</th><th>metric</th><th>delta (95% CI)</th><th>p (paired bootstrap)</th>"
        "<th>p (sign test)</th><th>wins/ties/losses</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No candidate.</p>"


def _benchmark_table(report: dict[str, Any]) -> str:
    labels = list(report["benchmarks"])
    tasks = sorted({task for scores in report["benchmarks"].values() for task in scores})
    head = "<tr><th>benchmark</th>" + "".join(f"<th>{_e(label)}</th>" for label in labels) + "</tr>"
    rows = [
        f"<tr><td>{_e(task)}</td>"
        + "".join(f"<td>{_fmt(report['benchmarks'][label].get(task))}</td>" for label in labels)
        + "</tr>"
        for task in tasks
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _error_tables(report: dict[str, Any]) -> str:
    parts = []
    for label, categories in report["error_analysis"].items():
        parts.append(f"<h3>{_e(label)}</h3><table><tr><th>category</th><th>count</th><th>examples</th></tr>")
        for category, found in categories.items():
            examples = "".join(
                f"<div class='ex'><b>Q</b> {_e(x['question'])}<br><b>ref</b> {_e(x['reference'])}"
                f"<br><b>answer</b> {_e(x['answer'])}</div>"
                for x in found["examples"]
            )
            parts.append(f"<tr><td>{_e(category)}</td><td>{found['count']}</td><td>{examples}</td></tr>")
        parts.append("</table>")
    return "".join(parts)


def _example_table(report: dict[str, Any], labels: list[str]) -> str:
    head = (
        "<tr><th>#</th><th>question</th><th>reference</th>"
        + "".join(f"<th>{_e(label)}</th>" for label in labels)
        + "</tr>"
    )
    rows = []
    for row in report["examples"][:EXAMPLE_ROWS_SHOWN]:
        cells = []
        for label in labels:
            answer = row["answers"][label]
            scores = answer["scores"]
            note = f"F1 {scores['token_f1']:.2f} · ROUGE-L {scores['rouge_l']:.2f}"
            if answer["error_category"]:
                note += f" · {answer['error_category']}"
            cells.append(f"<td>{_e(answer['text'])}<div class='small'>{_e(note)}</div></td>")
        rows.append(
            f"<tr><td>{row['index']}</td><td>{_e(row['question'])}</td><td>{_e(row['reference'])}</td>"
            + "".join(cells)
            + "</tr>"
        )
    shown = min(len(report["examples"]), EXAMPLE_ROWS_SHOWN)
    note = (
        f"<p class='small'>{shown} of {len(report['examples'])} examples shown; all are in the JSON twin.</p>"
    )
    return f"{note}<table>{head}{''.join(rows)}</table>"


# Formatting


def _img(plots: dict[str, str], name: str, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='{plots[name]}'>" if name in plots else ""


def _interval(summary: dict[str, Any] | None, signed: bool = False) -> str:
    if not summary or summary.get("mean") is None:
        return "-"
    sign = "+" if signed else ""
    return f"{summary['mean']:{sign}.4f} [{summary['low']:{sign}.4f}, {summary['high']:{sign}.4f}] n={summary['n']}"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def _e(text: Any) -> str:
    return html.escape(str(text))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; text-align: left; }
.pass { color: #080; } .fail { color: #b00; }
.small { color: #666; font-size: 11px; } .ex { margin-bottom: 6px; }
img { display: block; margin: 1em 0; }
"""
