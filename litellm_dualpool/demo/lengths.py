"""Request lengths that match the Azure 2023 LLM inference traces, without the trace files.

The table ``azure2023_lengths.json`` beside this module was fitted once from
``AzureLLMInferenceTrace_{code,conv}.csv`` (Splitwise, ISCA 2024; CC-BY-4.0) by ``fit_table``:
for each trace, the (context, generated) pairs sorted by total tokens, taken at the quantile
midpoints ``(i + 0.5) / points``. Sampling a uniform quantile and interpolating between
neighbouring pairs reproduces the distribution of total tokens within one table step (1/256),
keeps the context/output split seen at each size, and needs no file outside the package at run
time. The extreme tail beyond the last midpoint (conv: 0.01% above 8K tokens) is not sampled;
the demo adds its long requests deliberately instead.

Rerun the fit with ``python -m litellm_dualpool.demo.lengths AzureLLMInferenceTrace_code.csv
AzureLLMInferenceTrace_conv.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("azure2023_lengths.json")
#: quantile points per trace in the committed table (256 keeps the percentiles within 0.4%)
TABLE_POINTS = 256


@dataclass(frozen=True, slots=True)
class TraceLengths:
    """One trace's fitted table: ``pairs[i]`` is the (context, generated) pair at quantile
    ``(i + 0.5) / len(pairs)`` of total tokens; ``requests_per_s`` the trace's mean arrival rate."""

    name: str
    pairs: tuple[tuple[int, int], ...]
    requests: int
    requests_per_s: float

    def sample(self, rng: random.Random) -> tuple[int, int]:
        """Draw (context_tokens, generated_tokens) by inverse-CDF sampling of the table."""
        position = min(max(rng.random() * len(self.pairs) - 0.5, 0.0), len(self.pairs) - 1.0)
        low = int(position)
        high = min(low + 1, len(self.pairs) - 1)
        weight = position - low
        (c0, g0), (c1, g1) = self.pairs[low], self.pairs[high]
        context = round(c0 + (c1 - c0) * weight)
        generated = round(g0 + (g1 - g0) * weight)
        return max(1, context), max(1, generated)


def _read_azure_csv(path: Path) -> tuple[list[tuple[int, int]], float]:
    pairs: list[tuple[int, int]] = []
    stamps: list[datetime] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            pairs.append((int(row["ContextTokens"]), int(row["GeneratedTokens"])))
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]))
    span_s = (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0
    return pairs, (len(pairs) / span_s if span_s > 0 else 0.0)


def fit_table(path: Path, points: int = TABLE_POINTS) -> dict[str, Any]:
    """The committed table for one Azure CSV: ``points`` pairs at the total-token quantile
    midpoints."""
    pairs, rate = _read_azure_csv(path)
    if len(pairs) < points:
        raise ValueError(f"{path}: {len(pairs)} rows, fewer than the {points} table points")
    ordered = sorted(pairs, key=lambda pair: (pair[0] + pair[1], pair[0]))
    chosen = [ordered[int((i + 0.5) * len(ordered) / points)] for i in range(points)]
    return {"requests": len(pairs), "requests_per_s": round(rate, 4), "pairs": chosen}


@cache
def azure_tables() -> dict[str, TraceLengths]:
    """The committed tables, by trace name ("code", "conv")."""
    raw = json.loads(TABLE_PATH.read_text(encoding="utf-8"))
    return {
        name: TraceLengths(
            name=name,
            pairs=tuple((int(c), int(g)) for c, g in entry["pairs"]),
            requests=int(entry["requests"]),
            requests_per_s=float(entry["requests_per_s"]),
        )
        for name, entry in raw["traces"].items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Refit the committed Azure 2023 length table.")
    parser.add_argument("code_csv", type=Path)
    parser.add_argument("conv_csv", type=Path)
    parser.add_argument("--points", type=int, default=TABLE_POINTS)
    parser.add_argument("--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args(argv)
    table = {
        "source": "Azure LLM inference trace 2023 (Splitwise, ISCA 2024), CC-BY-4.0; "
        "pairs (ContextTokens, GeneratedTokens) at the midpoint quantiles (i+0.5)/points of their sum",
        "traces": {"code": fit_table(args.code_csv, args.points),
                   "conv": fit_table(args.conv_csv, args.points)},
    }
    args.out.write_text(json.dumps(table, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
