"""What tokens cost, per model: the one table of prices in tether.

Prices are US dollars per million tokens. A model not in the table has an
unknown price: callers say "cost unknown" rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens for one model (cache writes at the 5-minute TTL tether asks for)."""

    input: float
    output: float
    cache_write: float
    cache_read: float
    long_prompt: Price | None = None
    """Rates for a request whose prompt is over ``long_prompt_over`` tokens; None = one rate for all."""
    long_prompt_over: int = 0
    """Prompt tokens (input + cache writes + cache reads) beyond which ``long_prompt`` applies."""


# Sources, read 2026-12 through the docs index:
# - platform.claude.com/docs/en/about-claude/pricing, "Model pricing" (Fable 5.1, Mythos 5.1,
#   Fable 5, Mythos 5, Opus 5, Opus 4.8 to 4.5, Opus 4.1, Opus 4, Sonnet 4.x, Haiku 4.5);
# - the model pages platform.claude.com/docs/en/models/<model>/overview for Opus 5.5,
#   Sonnet 5.5, Sonnet 5 and Haiku 5.5 ("Pricing": input, 5m cache write, cache read, output).
# Not read on an Anthropic page itself, only in price trackers that cite the live pricing page
# (phuryn/claude-usage v1.5.7, kurofune/claudit v1.9.2, TheKrush/PromptFuel v1.0.23,
# archid21/rightsize v0.10.2):
# - Fable 5.2 / Mythos 5.2 ($8 / $40, cache write $10, cache read $0.20; released 2026-11-09);
# - Sonnet 5.5's cache read cut from $0.20 to $0.10 on 2026-10-07 (its model page still said $0.20);
# - Haiku 5.5's cache rates and its band: prompts over 100K tokens cost 5x on every token.
# No price found anywhere for claude-mythos-preview (invitation only): it stays unpriced.
PRICES: dict[str, Price] = {
    "claude-fable-5-2": Price(input=8.0, output=40.0, cache_write=10.0, cache_read=0.20),
    "claude-mythos-5-2": Price(input=8.0, output=40.0, cache_write=10.0, cache_read=0.20),
    "claude-fable-5-1": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=0.25),
    "claude-mythos-5-1": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=0.25),
    "claude-fable-5": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=1.0),
    "claude-mythos-5": Price(input=10.0, output=50.0, cache_write=12.50, cache_read=1.0),
    "claude-opus-5-5": Price(input=4.0, output=20.0, cache_write=5.0, cache_read=0.20),
    "claude-opus-5": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-8": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-7": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-6": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-5": Price(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-1": Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50),
    "claude-opus-4-0": Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50),
    "claude-opus-4": Price(input=15.0, output=75.0, cache_write=18.75, cache_read=1.50),
    "claude-sonnet-5-5": Price(input=2.0, output=10.0, cache_write=2.50, cache_read=0.10),
    "claude-sonnet-5": Price(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20),
    "claude-sonnet-4-6": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-4-5": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-4-0": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-4": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-3-7-sonnet": Price(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-haiku-5-5": Price(
        input=0.10,
        output=0.50,
        cache_write=0.125,
        cache_read=0.01,
        long_prompt=Price(input=0.50, output=2.50, cache_write=0.625, cache_read=0.05),
        long_prompt_over=100_000,
    ),
    "claude-haiku-4-5": Price(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10),
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
    prompt = (
        usage.get("input_tokens", 0)
        + usage.get("cache_creation_input_tokens", 0)
        + usage.get("cache_read_input_tokens", 0)
    )
    if price.long_prompt is not None and prompt > price.long_prompt_over:
        price = price.long_prompt
    return (
        usage.get("input_tokens", 0) * price.input
        + usage.get("output_tokens", 0) * price.output
        + usage.get("cache_creation_input_tokens", 0) * price.cache_write
        + usage.get("cache_read_input_tokens", 0) * price.cache_read
    ) / 1_000_000
