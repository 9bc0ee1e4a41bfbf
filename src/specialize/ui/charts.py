"""Charts of the dashboard as inline SVG, drawn on the server.

Bars with intervals, label balance and per-class scores are all one chart (`bars`: groups of bars, one bar per
series, an optional interval on each); the confusion matrix is a grid. The live training curve is the one chart
drawn in the browser (`static/ui.js`), since it changes while the page is open.

Hand-written rather than a plotting library: a few dozen SVG elements need no dependency, render the same in
every browser with no script, and stay searchable text. Every label is escaped: a label is user data.
"""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")
WIDTH = 720
LABEL_WIDTH = 190
ROW = 18


def _element(tag: str, text: str | Markup = "", **attrs: object) -> Markup:
    shown = " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
    return Markup(f"<{tag} {shown}>{escape(text)}</{tag}>")


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(value: float) -> str:
    """Counts as integers, scores with 3 decimals."""
    return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 or abs(value) >= 1000 else f"{value:.3f}"


@dataclass(frozen=True)
class Bar:
    series: str
    value: float
    low: float | None = None
    high: float | None = None


def bars(
    groups: list[tuple[str, list[Bar]]], title: str, scale_max: float | None = None, test_id: str = ""
) -> Markup:
    """Horizontal bars, grouped; a whisker over a bar marks its interval. Series share colours across groups.

    Args:
        groups: (group label, its bars) in display order.
        title: what the chart shows, read out by screen readers.
        scale_max: the right end of the axis (1 for scores); default the largest value or interval end.
        test_id: `data-testid` of the chart.
    """
    series = list(dict.fromkeys(b.series for _, group in groups for b in group))
    colour = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(series)}
    ends = [max(b.value, b.high or 0.0) for _, group in groups for b in group]
    top = scale_max if scale_max is not None else max(ends, default=1.0) or 1.0
    plot = WIDTH - LABEL_WIDTH - 70
    legend = 18 * len(series) + 4 if len(series) > 1 else 0
    parts: list[Markup] = []
    y = legend + 6
    for label, group in groups:
        height = ROW * len(group)
        parts.append(
            _element(
                "text",
                Markup(_element("title", label)) + escape(_short(label)),
                x=LABEL_WIDTH - 8,
                y=y + height / 2 + 4,
                text_anchor="end",
                class_="axis",
            )
        )
        for i, bar in enumerate(group):
            top_y = y + i * ROW + 2
            width = max(0.0, min(bar.value, top)) / top * plot
            shown = f"{bar.series}: {_fmt(bar.value)}"
            if bar.low is not None and bar.high is not None:
                shown += f" (95% interval {_fmt(bar.low)} to {_fmt(bar.high)})"
            parts.append(
                _element(
                    "rect",
                    _element("title", f"{label}, {shown}"),
                    x=LABEL_WIDTH,
                    y=top_y,
                    width=f"{width:.1f}",
                    height=ROW - 4,
                    fill=colour[bar.series],
                    data_value=repr(bar.value),
                )
            )
            end = LABEL_WIDTH + width
            if bar.low is not None and bar.high is not None:
                x0 = LABEL_WIDTH + max(0.0, min(bar.low, top)) / top * plot
                x1 = LABEL_WIDTH + max(0.0, min(bar.high, top)) / top * plot
                mid = top_y + (ROW - 4) / 2
                parts.append(
                    _element(
                        "path",
                        d=f"M{x0:.1f} {mid - 4}v8M{x0:.1f} {mid}H{x1:.1f}M{x1:.1f} {mid - 4}v8",
                        class_="whisker",
                    )
                )
                end = max(end, x1)
            parts.append(
                _element("text", _fmt(bar.value), x=f"{end + 4:.1f}", y=top_y + ROW - 7, class_="value")
            )
        y += height + 8
    for i, name in enumerate(series if legend else []):
        parts.append(_element("rect", x=LABEL_WIDTH, y=4 + 18 * i, width=12, height=12, fill=colour[name]))
        parts.append(_element("text", _short(name, 70), x=LABEL_WIDTH + 16, y=14 + 18 * i, class_="legend"))
    parts.append(
        _element("path", d=f"M{LABEL_WIDTH} {legend + 2}V{y - 4}", class_="axis-line"),
    )
    return _svg(Markup("").join(parts), y + 4, title, test_id)


def confusion_matrix(labels: list[str], matrix: list[list[float]], title: str, test_id: str = "") -> Markup:
    """A grid of counts, rows the reference label and columns the predicted one; darker is more."""
    n = len(labels)
    cell = max(18, min(44, 420 // max(n, 1)))
    longest = max((len(_short(label, 18)) for label in labels), default=1)
    left, head = 170, 24 + 6 * longest  # room for the column labels, written at 60 degrees
    most = max((v for row in matrix for v in row), default=0) or 1
    parts: list[Markup] = []
    for i, label in enumerate(labels):
        parts.append(
            _element(
                "text",
                Markup(_element("title", label)) + escape(_short(label, 24)),
                x=left - 6,
                y=head + i * cell + cell / 2 + 4,
                text_anchor="end",
                class_="axis",
            )
        )
        x, y = left + i * cell + cell / 2 + 4, head - 6
        parts.append(
            _element(
                "text",
                Markup(_element("title", label)) + escape(_short(label, 18)),
                x=x,
                y=y,
                transform=f"rotate(-60 {x} {y})",
                class_="axis",
            )
        )
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            shade = value / most
            parts.append(
                _element(
                    "rect",
                    _element("title", f"gold {labels[i]}, predicted {labels[j]}: {value:g}"),
                    x=left + j * cell,
                    y=head + i * cell,
                    width=cell - 1,
                    height=cell - 1,
                    fill=f"rgba(37,99,235,{0.06 + 0.94 * shade:.3f})",
                    class_="cell diagonal" if i == j else "cell",
                )
            )
            if value and cell >= 18:
                parts.append(
                    _element(
                        "text",
                        f"{value:g}",
                        x=left + j * cell + cell / 2,
                        y=head + i * cell + cell / 2 + 4,
                        text_anchor="middle",
                        class_="count light" if shade > 0.55 else "count",
                    )
                )
    size = head + n * cell + 24
    parts.append(
        _element(
            "text", "predicted", x=left + n * cell / 2, y=size - 4, text_anchor="middle", class_="legend"
        )
    )
    return _svg(Markup("").join(parts), size, title, test_id, width=max(left + n * cell + 20, 320))


def _svg(body: Markup, height: float, title: str, test_id: str, width: int = WIDTH) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height:.0f}" width="{width}" role="img" '
        f'aria-label="{escape(title)}" data-testid="{escape(test_id)}" xmlns="http://www.w3.org/2000/svg">'
    ) + Markup(f"<title>{escape(title)}</title>{body}</svg>")
