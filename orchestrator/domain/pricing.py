"""What a model call costs: a price table per model, in USD per million tokens.

The gateway meters every call with it. A model is matched by the longest key that its
name starts with (``claude-sonnet-4`` covers ``claude-sonnet-4-5-20250929``). A model no
key matches is charged at the table's highest prices and flagged as unpriced: a missing
row must make a call look expensive, never free.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

MILLION = Decimal(1_000_000)


class ModelPrice(BaseModel):
    """USD per million tokens of each kind the Messages API reports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)  # default: 1.25 x input
    cache_read: Decimal | None = Field(default=None, ge=0)  # default: 0.1 x input

    @property
    def cache_write_rate(self) -> Decimal:
        return self.cache_write if self.cache_write is not None else self.input * Decimal("1.25")

    @property
    def cache_read_rate(self) -> Decimal:
        return self.cache_read if self.cache_read is not None else self.input * Decimal("0.1")


def _price(input_usd: str, output_usd: str) -> ModelPrice:
    return ModelPrice(input=Decimal(input_usd), output=Decimal(output_usd))


# Anthropic's list prices (USD per million tokens) for the model families Claude Code
# uses; a family's bare name prices its newer versions alike. Operators override the
# whole table with CCQ_MODEL_PRICES (JSON).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "claude-opus": _price("5", "25"),
    "claude-opus-4": _price("15", "75"),
    "claude-opus-4-5": _price("5", "25"),
    "claude-sonnet": _price("3", "15"),
    "claude-3-7-sonnet": _price("3", "15"),
    "claude-haiku": _price("1", "5"),
    "claude-3-5-haiku": _price("0.8", "4"),
}


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as the API's ``usage`` object gives them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )


@dataclass(frozen=True)
class Charge:
    """The cost of one call and whether the table knew its model."""

    cost_usd: Decimal
    priced: bool


class PriceTable:
    """Prices by model-name prefix (see the module docstring)."""

    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        if not prices:
            raise ValueError("the price table is empty")
        # Longest prefix first, so the most specific key wins.
        self._prices = sorted(prices.items(), key=lambda item: len(item[0]), reverse=True)
        self._fallback = ModelPrice(
            input=max(p.input for p in prices.values()),
            output=max(p.output for p in prices.values()),
            cache_write=max(p.cache_write_rate for p in prices.values()),
            cache_read=max(p.cache_read_rate for p in prices.values()),
        )

    def price_of(self, model: str | None) -> ModelPrice | None:
        for prefix, price in self._prices:
            if model and model.startswith(prefix):
                return price
        return None

    def charge(self, model: str | None, usage: Usage) -> Charge:
        price = self.price_of(model)
        rates = price or self._fallback
        cost = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + usage.cache_creation_input_tokens * rates.cache_write_rate
            + usage.cache_read_input_tokens * rates.cache_read_rate
        ) / MILLION
        return Charge(cost_usd=cost, priced=price is not None)
