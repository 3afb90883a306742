"""How long an answer would be if max_tokens did not cut it: the ``--output-len-dist`` spec.

Specs: ``fixed:N`` (always N tokens), ``uniform:LO:HI`` (integers, both ends included),
``exp:MEAN`` (geometric with that mean, at least 1 token; long-tailed like real chat answers).
A request can ask for an exact length the way it would with vLLM: ``ignore_eos: true`` with
``max_tokens: N`` (exactly N), or ``min_tokens`` to raise the drawn length.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DEFAULT_SPEC = "exp:256"


@dataclass(frozen=True, slots=True)
class OutputLengths:
    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> OutputLengths:
        kind, _, rest = spec.partition(":")
        try:
            args = [float(x) for x in rest.split(":")] if rest else []
        except ValueError:
            raise ValueError(f"--output-len-dist {spec!r}: numbers expected after the kind") from None
        if kind == "fixed" and len(args) == 1 and args[0] >= 1:
            return cls("fixed", args[0])
        if kind == "uniform" and len(args) == 2 and 1 <= args[0] <= args[1]:
            return cls("uniform", args[0], args[1])
        if kind == "exp" and len(args) == 1 and args[0] >= 1:
            return cls("exp", args[0])
        raise ValueError(
            f"--output-len-dist {spec!r}: expected fixed:N, uniform:LO:HI or exp:MEAN with N, LO, MEAN >= 1"
        )

    def draw(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a)
        if self.kind == "uniform":
            return rng.randint(int(self.a), int(self.b))
        # Geometric on {1, 2, ...} with mean a: P(success) = 1/a.
        if self.a <= 1:
            return 1
        u = 1.0 - rng.random()
        return 1 + int(math.log(u) / math.log(1.0 - 1.0 / self.a))
