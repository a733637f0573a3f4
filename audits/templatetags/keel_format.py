"""Number formats for exports: shares as percentages, nats with two decimals."""

from django import template

register = template.Library()


@register.filter
def pct(value) -> str:
    return "–" if value is None else f"{value:.0%}"


@register.filter
def nats(value) -> str:
    return "–" if value is None else f"{value:+.2f}"


@register.filter
def interval(score, style: str = "nats") -> str:
    """'54% (43% to 65%), n=72' or '+0.25 (-0.10 to +0.60), n=60' from a score dict;
    style "pct" or "nats", and ",bare" to leave out n (when a column gives it)."""
    if not score:
        return "–"
    kind, _, bare = style.partition(",")
    fmt = pct if kind == "pct" else nats
    low, high = score.get("ci_low"), score.get("ci_high")
    bounds = f" ({fmt(low)} to {fmt(high)})" if low is not None and high is not None else ""
    return f"{fmt(score['value'])}{bounds}" + ("" if bare else f", n={score['n']}")
