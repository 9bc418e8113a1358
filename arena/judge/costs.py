"""Token usage and estimated cost of a run, from a small editable price table."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from arena.judge.questions import DataFileError


@dataclass(frozen=True)
class Price:
    """US dollars per million input and output tokens."""

    input: float
    output: float


class PriceTable:
    """Prices by model-id prefix (longest match wins); unknown models cost 0."""

    def __init__(self, prices: dict[str, Price]):
        self._prices = dict(sorted(prices.items(), key=lambda item: -len(item[0])))

    @classmethod
    def load(cls, path: Path | None = None) -> PriceTable:
        """The table in ``path``, or the one bundled with the package."""
        if path is None:
            text = resources.files("arena.judge").joinpath("data", "prices.toml").read_text(encoding="utf-8")
            source = "bundled prices.toml"
        else:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise DataFileError(f"cannot read price table {path}: {exc}") from exc
            source = str(path)
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise DataFileError(f"{source}: invalid TOML: {exc}") from exc
        prices = {}
        for model, entry in (data.get("models") or {}).items():
            try:
                prices[model] = Price(float(entry["input"]), float(entry["output"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataFileError(f"{source}: [models.{model!r}] needs numeric input and output") from exc
        return cls(prices)

    def price(self, model_id: str) -> Price | None:
        lowered = model_id.lower()
        for prefix, price in self._prices.items():
            if lowered.startswith(prefix.lower()):
                return price
        return None


@dataclass
class ModelUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class UsageMeter:
    """Counts the calls and tokens of one run, per model id (the endpoint's model name)."""

    by_model: dict[str, ModelUsage] = field(default_factory=dict)

    def add(self, model_id: str, prompt_tokens: int | None, completion_tokens: int | None) -> None:
        usage = self.by_model.setdefault(model_id, ModelUsage())
        usage.calls += 1
        usage.prompt_tokens += prompt_tokens or 0
        usage.completion_tokens += completion_tokens or 0

    @property
    def calls(self) -> int:
        return sum(u.calls for u in self.by_model.values())

    def report(self, prices: PriceTable) -> list[dict[str, object]]:
        """One row per model: calls, tokens, estimated cost and a note when the price is unknown."""
        rows: list[dict[str, object]] = []
        for model_id, usage in sorted(self.by_model.items()):
            price = prices.price(model_id)
            cost = 0.0
            if price is not None:
                cost = (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1e6
            rows.append(
                {
                    "model": model_id,
                    "calls": usage.calls,
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "cost_usd": round(cost, 6),
                    "note": "" if price is not None else "price unknown: counted as $0",
                }
            )
        return rows
