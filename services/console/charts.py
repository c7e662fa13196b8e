"""Charts drawn on the server as inline SVG: nothing to download, readable without JavaScript, and testable
as text. The live loss chart is the exception (console.js draws it as events stream in)."""

from collections.abc import Sequence

from markupsafe import Markup, escape

HISTOGRAM_WIDTH, HISTOGRAM_HEIGHT = 520, 150
INTERVAL_WIDTH, INTERVAL_HEIGHT = 160, 16


def histogram(counts: Sequence[int], bin_width: int, caption: str) -> Markup:
    """Bars of example counts by token length: bin i holds lengths in [i*bin_width, (i+1)*bin_width)."""
    if not counts or bin_width < 1:
        return Markup("")
    left, bottom, top = 36, 20, 8
    plot_width, plot_height = HISTOGRAM_WIDTH - left - 4, HISTOGRAM_HEIGHT - bottom - top
    tallest = max(counts) or 1
    bar_width = plot_width / len(counts)
    bars = []
    for index, count in enumerate(counts):
        height = plot_height * count / tallest
        low, high = index * bin_width, (index + 1) * bin_width - 1
        bars.append(
            f'<rect class="bar" x="{left + index * bar_width:.1f}" y="{top + plot_height - height:.1f}" '
            f'width="{max(bar_width - 1, 1):.1f}" height="{height:.1f}">'
            f"<title>{low}-{high} tokens: {count} examples</title></rect>"
        )
    axis_y = top + plot_height
    last = len(counts) * bin_width
    return Markup(
        f'<svg class="chart histogram" viewBox="0 0 {HISTOGRAM_WIDTH} {HISTOGRAM_HEIGHT}" role="img" '
        f'aria-label="{escape(caption)}">'
        f'<line class="axis" x1="{left}" y1="{axis_y}" x2="{HISTOGRAM_WIDTH - 4}" y2="{axis_y}"/>'
        f'<text x="2" y="{top + 10}">{tallest}</text><text x="2" y="{axis_y}">0</text>'
        f'<text x="{left}" y="{HISTOGRAM_HEIGHT - 4}">0</text>'
        f'<text x="{HISTOGRAM_WIDTH - 90}" y="{HISTOGRAM_HEIGHT - 4}">{last} tokens</text>'
        + "".join(bars)
        + "</svg>"
    )


def interval(mean: float, low: float, high: float, axis_low: float, axis_high: float) -> Markup:
    """A mean with its interval as a whisker on a shared axis, so rows of one table compare at a glance."""
    span = (axis_high - axis_low) or 1.0

    def x(value: float) -> float:
        return 4 + (INTERVAL_WIDTH - 8) * (min(max(value, axis_low), axis_high) - axis_low) / span

    middle = INTERVAL_HEIGHT / 2
    return Markup(
        f'<svg class="interval" viewBox="0 0 {INTERVAL_WIDTH} {INTERVAL_HEIGHT}" width="{INTERVAL_WIDTH}" '
        f'height="{INTERVAL_HEIGHT}" role="img" aria-label="{mean:.3f} ({low:.3f} to {high:.3f})">'
        f'<line class="whisker" x1="{x(low):.1f}" y1="{middle}" x2="{x(high):.1f}" y2="{middle}"/>'
        f'<circle class="mean" cx="{x(mean):.1f}" cy="{middle}" r="3.5"/></svg>'
    )
