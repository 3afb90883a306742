"""`litellm-dualpool estimate`: the Estimate and the Decision for one request body, as JSON.

    litellm-dualpool estimate body.json --pool short=8192 --pool long=65536
    echo '{"model": "llama-3-70b", "messages": [...], "max_tokens": 256}' | litellm-dualpool estimate -

The calibration key's model group is the body's ``model`` (what the proxy uses), unless
``--model-group`` names another. Its output is always one JSON object (``--json`` is accepted
for the CLI-wide convention).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from litellm_dualpool.commands.common import add_json_flag, parse_pool
from litellm_dualpool.core.calibration import CalibrationSettings, Calibrator
from litellm_dualpool.core.estimator import Estimator
from litellm_dualpool.core.plan import plan_request
from litellm_dualpool.core.policy import PolicySettings, PoolState
from litellm_dualpool.errors import DualPoolError

DEFAULT_POOLS = ("short=8192", "long=65536")
#: the model group when neither the body nor --model-group names one
FALLBACK_MODEL_GROUP = "default"
#: --pool keys (the CLI-wide syntax; ``load`` is the pool's in-flight load, 0-1)
_POOL_KEYS = {"name": "name", "max_model_len": "max_model_len", "load": "load"}


def _pool(text: str) -> PoolState:
    """NAME=MAX_MODEL_LEN[@LOAD] (e.g. short=8192@0.95) or name=short,max_model_len=8192,load=0.95."""
    try:
        fields = parse_pool(text, _POOL_KEYS)
        load = fields.get("load")
        return PoolState(fields["name"], int(fields["max_model_len"]),
                         float(load) if load else None)
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"expected NAME=MAX_MODEL_LEN[@LOAD] or name=...,max_model_len=...[,load=...], "
            f"got {text!r}") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("body", nargs="?", default="-",
                        help="JSON request body file ('-' or absent: stdin)")
    parser.add_argument("--model-group", default=None,
                        help="model group (calibration key; default: the body's model, else "
                             f"{FALLBACK_MODEL_GROUP!r})")
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
    add_json_flag(parser, "one JSON object on stdout (always; accepted for the CLI convention)")


def _read_body(path: str) -> Any:
    if path == "-":
        return json.load(sys.stdin)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def model_group(flag: str | None, body: Any) -> str:
    """--model-group, else the body's ``model`` (the proxy keys calibration by the group the
    request names), else the fallback."""
    if flag:
        return flag
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model else FALLBACK_MODEL_GROUP


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
        estimate = estimator.estimate(body, model_group(args.model_group, body),
                                      category=args.category,
                                      embedding=args.embedding)
        pools = args.pools or [_pool(p) for p in DEFAULT_POOLS]
        settings = PolicySettings(
            headroom_fraction=args.headroom,
            spillover_load_fraction=args.spillover if args.spillover > 0 else None)
        decision = plan_request(estimate, pools, settings).decision  # as the proxy decides
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
