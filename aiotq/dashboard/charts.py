"""The overview's charts, drawn server-side as inline SVG (no chart library, no script):
tasks per minute stacked by outcome, and the p50 / p95 runtime per minute."""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from ..history import Minute

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 720, 180, 44, 22, 8
OUTCOMES = (("succeeded", "ok"), ("failed", "bad"), ("retried", "warn"), ("revoked", "muted"))


def hour_of(minutes: Sequence[Minute], now_s: float | None = None, span: int = 60) -> list[Minute]:
    """The last `span` minutes, each present (a minute without tasks is zeros)."""
    now = time.time() if now_s is None else now_s
    last = int(now) // 60 * 60
    by_minute = {m.minute_s: m for m in minutes}
    return [
        by_minute.get(start, Minute(minute_s=start))
        for start in range(last - (span - 1) * 60, last + 60, 60)
    ]


def _label(minute_s: int) -> str:
    return time.strftime("%H:%M", time.gmtime(minute_s))


def _axis(top: float, unit: str) -> list[str]:
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    parts = [f'<line class="axis" x1="{PAD_LEFT}" y1="{HEIGHT - PAD_BOTTOM}" '
             f'x2="{WIDTH}" y2="{HEIGHT - PAD_BOTTOM}"/>']  # fmt: skip
    for fraction in (0.5, 1.0):
        y = HEIGHT - PAD_BOTTOM - fraction * plot_h
        value = top * fraction
        text = f"{value:.3g}{unit}"
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH}" y2="{y:.1f}"/>')
        parts.append(f'<text class="tick" x="{PAD_LEFT - 4}" y="{y + 4:.1f}">{escape(text)}</text>')
    return parts


def _x_labels(hour: Sequence[Minute], step: float) -> list[str]:
    parts = []
    for index in range(0, len(hour), 15):
        x = PAD_LEFT + index * step
        parts.append(f'<text class="xtick" x="{x:.1f}" y="{HEIGHT - 6}">'
                     f"{_label(hour[index].minute_s)}</text>")  # fmt: skip
    return parts


def _svg(title: str, parts: list[str]) -> Markup:
    body = "".join(parts)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>'
    )


def throughput(hour: Sequence[Minute]) -> Markup:
    """Stacked bars: tasks finished per minute by outcome (UTC minutes)."""
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(hour), 1)
    top = max([m.succeeded + m.failed + m.retried + m.revoked for m in hour] + [1])
    parts = _axis(float(top), "")
    for index, minute in enumerate(hour):
        x = PAD_LEFT + index * step
        y = float(HEIGHT - PAD_BOTTOM)
        tip = ", ".join(f"{getattr(minute, name)} {name}" for name, _ in OUTCOMES)
        parts.append(f"<g><title>{_label(minute.minute_s)} UTC: {escape(tip)}</title>")
        for name, css in OUTCOMES:
            count = getattr(minute, name)
            if not count:
                continue
            height = count / top * plot_h
            y -= height
            parts.append(f'<rect class="{css}" x="{x + 1:.1f}" y="{y:.1f}" '
                         f'width="{max(step - 2, 1):.1f}" height="{height:.1f}"/>')  # fmt: skip
        # an invisible full-height target so the tooltip shows on empty minutes too
        parts.append(f'<rect class="hit" x="{x:.1f}" y="{PAD_TOP}" width="{step:.1f}" '
                     f'height="{plot_h}"/></g>')  # fmt: skip
    parts += _x_labels(hour, step)
    return _svg("Tasks per minute by outcome, last hour", parts)


def runtimes(hour: Sequence[Minute]) -> Markup:
    """Lines: p50 and p95 runtime per minute (minutes without tasks leave a gap)."""
    plot_w, plot_h = WIDTH - PAD_LEFT, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(len(hour), 1)
    values = [v for m in hour for v in (m.runtime_p50_s, m.runtime_p95_s) if v is not None]
    top = max([*values, 0.001])
    parts = _axis(top, "s")
    for attribute, css in (("runtime_p50_s", "p50"), ("runtime_p95_s", "p95")):
        segment: list[str] = []
        segments: list[list[str]] = []
        for index, minute in enumerate(hour):
            value = getattr(minute, attribute)
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = PAD_LEFT + index * step + step / 2
            y = HEIGHT - PAD_BOTTOM - value / top * plot_h
            segment.append(f"{x:.1f},{y:.1f}")
            tip = f"{_label(minute.minute_s)} UTC {css}: {value:g}s"
            parts.append(f'<circle class="{css}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                         f"<title>{escape(tip)}</title></circle>")  # fmt: skip
        if segment:
            segments.append(segment)
        for points in segments:
            parts.append(f'<polyline class="{css}" points="{" ".join(points)}"/>')
    parts += _x_labels(hour, step)
    return _svg("Runtime p50 and p95 per minute, last hour", parts)
