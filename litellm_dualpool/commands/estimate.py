"""`litellm-dualpool estimate`: the Estimate and the Decision for one request body, as JSON.

    litellm-dualpool estimate body.json --pool short=8192 --pool long=65536
    echo '{"messages": [...], "max_tokens": 256}' | litellm-dualpool estimate -
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from litellm_dualpool.core.calibration import CalibrationSettings, Calibrator
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.policy import PolicySettings, PoolState, decide
from litellm_dualpool.errors import DualPoolError

DEFAULT_POOLS = ("short=8192", "long=65536")


def _pool(text: str) -> PoolState:
    """NAME=MAX_MODEL_LEN[@LOAD], e.g. short=8192@0.95."""
    name, sep, rest = text.partition("=")
    limit, _, load = rest.partition("@")
    try:
        if not (name and sep):
            raise ValueError
        return PoolState(name, int(limit), float(load) if load else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=MAX_MODEL_LEN[@LOAD], got {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("body", nargs="?", default="-",
                        help="JSON request body file ('-' or absent: stdin)")
    parser.add_argument("--model-group", default="default", help="model group (calibration key)")
    parser.add_argument("--category", default=None, help="caller-supplied category")
    parser.add_argument("--default-output-tokens", type=int, default=1024,
                        help="output budget when the body names none (default 1024)")
    parser.add_argument("--pool", dest="pools", type=_pool, action="append", default=None,
                        metavar="NAME=LEN[@LOAD]",
                        help=f"a pool (repeatable; default {' '.join(DEFAULT_POOLS)})")
    parser.add_argument("--headroom", type=float, default=0.0, help="headroom fraction")
    parser.add_argument("--spillover", type=float, default=0.9,
                        help="spillover load fraction (<= 0 disables)")
    parser.add_argument("--snapshot", default=None,
                        help="calibration snapshot JSON to restore before estimating")
    parser.add_argument("--embedding", action="store_true", help="an embeddings body")


def _read_body(path: str) -> Any:
    if path == "-":
        return json.load(sys.stdin)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def run(args: argparse.Namespace) -> int:
    try:
        body = _read_body(args.body)
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": f"cannot read a JSON body from {args.body!r}: {exc}"}),
              file=sys.stderr)
        return 2
    try:
        calibrator = Calibrator(CalibrationSettings())
        if args.snapshot:
            with open(args.snapshot, encoding="utf-8") as fh:
                calibrator.restore(json.load(fh))
        estimator = Estimator(calibrator, default_output_tokens=args.default_output_tokens)
        estimate = estimator.estimate(body, args.model_group, category=args.category,
                                      embedding=args.embedding)
        pools = args.pools or [_pool(p) for p in DEFAULT_POOLS]
        settings = PolicySettings(
            headroom_fraction=args.headroom,
            spillover_load_fraction=args.spillover if args.spillover > 0 else None)
        decision = decide(estimate.budget.total_tokens, pools, settings,
                          category=estimate.key.category, floor_tokens=estimate.budget.refusal_floor_tokens)
    except (DualPoolError, OSError, ValueError) as exc:
        error = {"error": str(exc), "type": type(exc).__name__}
        field = getattr(exc, "field", None) or getattr(exc, "path", None)
        if field:
            error["field"] = field
        print(json.dumps(error), file=sys.stderr)
        return 2
    shape = asdict(estimate.shape)
    shape["content_class"] = estimate.shape.content_class.value
    budget = asdict(estimate.budget)
    budget["total_tokens"] = estimate.budget.total_tokens
    budget["refusal_floor_tokens"] = estimate.budget.refusal_floor_tokens
    out = {
        "estimate": {"shape": shape, "key": asdict(estimate.key), "budget": budget},
        "decision": {**asdict(decision), "reason": decision.reason.value},
    }
    print(json.dumps(out, indent=2))
    return 0
