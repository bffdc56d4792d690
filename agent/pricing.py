"""What tokens cost, per model: the one table of prices in tether.

Prices are US dollars per million tokens. A model not in the table has an
unknown price: callers show "cost unknown" rather than a guess.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens for one model."""

    input: float
    output: float
    cache_write: float
    cache_read: float


_SONNET = Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)
_OPUS_4_5 = Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50)
_OPUS_4 = Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50)
_HAIKU_4_5 = Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10)

# Exact model names (dated snapshots are matched by their undated prefix).
PRICES: dict[str, Price] = {
    "claude-sonnet-4-5": _SONNET,
    "claude-sonnet-4-6": _SONNET,
    "claude-sonnet-4-0": _SONNET,
    "claude-sonnet-4": _SONNET,
    "claude-3-7-sonnet": _SONNET,
    "claude-opus-4-5": _OPUS_4_5,
    "claude-opus-4-6": _OPUS_4_5,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4-0": _OPUS_4,
    "claude-opus-4": _OPUS_4,
    "claude-haiku-4-5": _HAIKU_4_5,
}


def price_of(model: str) -> Price | None:
    """The price of ``model``, or None if it is not in the table."""
    if model in PRICES:
        return PRICES[model]
    # Dated snapshots: "claude-sonnet-4-5-20250929" -> "claude-sonnet-4-5".
    base, _, suffix = model.rpartition("-")
    if suffix.isdigit() and len(suffix) == 8:
        return PRICES.get(base)
    return None


def cost_usd(model: str, usage: dict[str, int]) -> float | None:
    """Dollars for one response's ``usage``; None when the model's price is unknown."""
    price = price_of(model)
    if price is None:
        return None
    return (
        usage.get("input_tokens", 0) * price.input
        + usage.get("output_tokens", 0) * price.output
        + usage.get("cache_creation_input_tokens", 0) * price.cache_write
        + usage.get("cache_read_input_tokens", 0) * price.cache_read
    ) / 1_000_000
