"""The price table: every model the API serves has a price, and costs follow the published rates."""

from __future__ import annotations

import typing

import pytest

from agent.model import DEFAULT_MODEL
from agent.pricing import PRICES, cost_usd, price_of

UNPRICED = {"claude-mythos-preview"}
"""Served, but no published price could be found (invitation only); see agent/pricing.py."""


def served_models() -> list[str]:
    """The model names the installed SDK lists (its ``Model`` type's literal names)."""
    from anthropic.types.model import Model

    (names, _str) = typing.get_args(Model)
    return list(typing.get_args(names))


def test_the_default_model_has_a_price() -> None:
    assert price_of(DEFAULT_MODEL) is not None


@pytest.mark.parametrize("model", served_models())
def test_every_model_the_sdk_lists_has_a_price(model: str) -> None:
    if model in UNPRICED:
        assert price_of(model) is None
    else:
        assert price_of(model) is not None, f"{model} has no price in agent/pricing.py"


def test_cost_of_one_answer_uses_each_rate() -> None:
    usage = {
        "input_tokens": 1_000_000,
        "output_tokens": 1_000_000,
        "cache_creation_input_tokens": 1_000_000,
        "cache_read_input_tokens": 1_000_000,
    }
    # Sonnet 5.5: $2 in, $10 out, $2.50 cache write, $0.10 cache read.
    assert cost_usd("claude-sonnet-5-5", usage) == pytest.approx(2 + 10 + 2.5 + 0.1)
    assert cost_usd("claude-sonnet-4-5-20250929", usage) == cost_usd("claude-sonnet-4-5", usage)


def test_haiku_5_5_costs_five_times_more_for_a_prompt_over_100k_tokens() -> None:
    short = cost_usd("claude-haiku-5-5", {"input_tokens": 100_000, "output_tokens": 1_000})
    long = cost_usd(
        "claude-haiku-5-5", {"input_tokens": 50_000, "cache_read_input_tokens": 50_001, "output_tokens": 1_000}
    )
    assert short == pytest.approx((100_000 * 0.10 + 1_000 * 0.50) / 1e6)
    assert long == pytest.approx((50_000 * 0.50 + 50_001 * 0.05 + 1_000 * 2.50) / 1e6)


def test_an_unknown_model_has_no_price_rather_than_a_guess() -> None:
    assert price_of("claude-unpriced-9") is None and cost_usd("claude-unpriced-9", {"input_tokens": 5}) is None
    assert all(model.startswith("claude-") for model in PRICES)
