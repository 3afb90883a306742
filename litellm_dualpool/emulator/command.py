"""`litellm-dualpool emulate`: an emulated vLLM server on loopback (see the package docstring).

Example::

    litellm-dualpool emulate --model llama-3-70b --gpu a100 --max-model-len 8192 \\
        --max-num-seqs 128 --port 8001 --speedup 10
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from litellm_dualpool.commands.common import add_hidden_alias, add_json_flag
from litellm_dualpool.emulator.faults import Faults, Refuse
from litellm_dualpool.emulator.outputs import DEFAULT_SPEC, OutputLengths
from litellm_dualpool.emulator.validation import ErrorFormat
from litellm_dualpool.errors import ConfigError

TENSOR_PARALLEL_CHOICES = (1, 2, 4, 8)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    eng = parser.add_argument_group("engine (vLLM serve flags)")
    eng.add_argument("--model", default="llama-3-70b", help="catalogue model (default %(default)s)")
    eng.add_argument("--gpu", default="a100", help="catalogue GPU (default %(default)s)")
    eng.add_argument("--tensor-parallel-size", "-tp", type=int, default=None,
                     help="GPUs per instance (default: the smallest of 1, 2, 4, 8 that holds the "
                          "weights and one max-model-len sequence)")
    add_hidden_alias(eng, "--tp", dest="tensor_parallel_size", value_type=int,
                     new="--tensor-parallel-size")
    eng.add_argument("--max-model-len", type=int, default=8192, help="context window (default %(default)s)")
    eng.add_argument("--max-num-seqs", type=int, default=256, help="max running requests (default %(default)s)")
    eng.add_argument("--max-num-batched-tokens", type=int, default=None,
                     help="token budget per step (default: max(8192, max-num-seqs))")
    eng.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="default %(default)s")
    eng.add_argument("--dtype", default="bfloat16", help="weights: bfloat16 or fp8 (default %(default)s)")
    eng.add_argument("--kv-cache-dtype", default="auto", help="auto, bfloat16 or fp8 (default %(default)s)")
    eng.add_argument("--speedup", type=float, default=1.0,
                     help="virtual seconds per wall second (default %(default)s)")
    eng.add_argument("--instant", action="store_true",
                     help="no engine: answer at once (for measuring a proxy's own overhead)")

    api = parser.add_argument_group("API")
    api.add_argument("--served-model-name", nargs="+", default=None,
                     help="name(s) the server answers to; the first is reported (default: --model)")
    api.add_argument("--tokenizer", choices=("llama3", "qwen3"), default=None,
                     help="exact tokenizer for usage.prompt_tokens (default: from --model)")
    api.add_argument("--output-len-dist", default=DEFAULT_SPEC,
                     help="natural answer length: fixed:N, uniform:LO:HI or exp:MEAN (default %(default)s)")
    api.add_argument("--seed", type=int, default=None, help="seed for output lengths and fault draws")
    api.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s)")
    api.add_argument("--port", type=int, default=8001, help="port, 0 for any free one (default %(default)s)")
    api.add_argument("--ready-file", type=Path, default=None,
                     help="write {host, port, pid} as JSON here once listening")
    api.add_argument("--log-level", default="warning", help="uvicorn log level (default %(default)s)")
    add_json_flag(api, "once listening, print {host, port, pid, url} as one JSON line on stdout")

    flt = parser.add_argument_group("faults (also changeable at run time: POST /admin/faults)")
    flt.add_argument("--error-format", choices=[f.value for f in ErrorFormat], default="current",
                     help="vLLM error bodies: current ({'error': {...}}) or legacy (flat)")
    flt.add_argument("--error-rate", type=float, default=0.0, help="fraction answered HTTP 500")
    flt.add_argument("--latency", type=float, default=0.0, dest="latency_seconds",
                     help="seconds added before each completion request")
    flt.add_argument("--hang-rate", type=float, default=0.0, help="fraction never answered")
    flt.add_argument("--drop-rate", type=float, default=0.0, help="fraction whose connection is cut")
    flt.add_argument("--refuse", choices=[r.value for r in Refuse], default="none",
                     help="503 on every route, or refuse TCP connections")
    flt.add_argument("--refuse-seconds", type=float, default=None, help="end the refusal after this long")
    flt.add_argument("--stall", action="store_true", help="start with the engine making no progress")
    flt.add_argument("--no-usage", action="store_true", help="report no usage in responses")


_EPILOG = """\
runtime faults: curl -X POST 127.0.0.1:PORT/admin/faults -d '{"error_rate": 0.5}'
knobs: error_rate, fail_next, latency_seconds, hang_rate, drop_rate, refuse (none|503|connection),
refuse_seconds, stall, no_usage, error_format (current|legacy), tokenize_latency_seconds,
tokenize_missing. GET /admin/faults shows them.
"""


def _default_tokenizer(model: str) -> str:
    return "qwen3" if "qwen" in model.lower() else "llama3"


def build_engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]  # returns sim.engine.Engine, imported lazily ([tools] extra)
    """The sim engine for these flags (ConfigError if the hardware cannot hold the model)."""
    from litellm_dualpool.sim.engine import Engine, EngineConfig

    batched = args.max_num_batched_tokens or max(8192, args.max_num_seqs)
    common = dict(gpu=args.gpu, model=args.model, max_model_len=args.max_model_len,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=batched,
                  gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                  kv_cache_dtype=args.kv_cache_dtype)
    if args.tensor_parallel_size is not None:
        return Engine(EngineConfig(tensor_parallel_size=args.tensor_parallel_size, **common))
    last: ConfigError | None = None
    for tp in TENSOR_PARALLEL_CHOICES:
        try:
            return Engine(EngineConfig(tensor_parallel_size=tp, **common))
        except ConfigError as exc:
            last = exc
    raise last or ConfigError("no tensor parallel size fits", path="tensor_parallel_size")


def run(args: argparse.Namespace) -> int:
    from litellm_dualpool.emulator.app import EmulatorState, ServerSettings, build_app
    from litellm_dualpool.emulator.backend import EngineBackend, InstantBackend
    from litellm_dualpool.emulator.server import RefusalController, serve

    try:
        outputs = OutputLengths.parse(args.output_len_dist)
        faults = Faults(error_rate=args.error_rate, latency_seconds=args.latency_seconds,
                        hang_rate=args.hang_rate, drop_rate=args.drop_rate, refuse=Refuse(args.refuse),
                        refuse_seconds=args.refuse_seconds, stall=args.stall, no_usage=args.no_usage,
                        error_format=ErrorFormat(args.error_format))
        if args.speedup <= 0:
            raise ValueError(f"--speedup must be > 0, got {args.speedup}")
        backend = InstantBackend() if args.instant else EngineBackend(build_engine(args), speedup=args.speedup)
    except (ValueError, ConfigError) as exc:
        print(f"litellm-dualpool emulate: {exc}", file=sys.stderr)
        return 2
    settings = ServerSettings(
        served_model_names=tuple(args.served_model_name or [args.model]),
        max_model_len=args.max_model_len,
        tokenizer=args.tokenizer or _default_tokenizer(args.model),
        seed=args.seed,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    controller = RefusalController(faults)
    state = EmulatorState(settings, backend, faults, outputs, on_faults_changed=controller.changed)
    return serve(build_app(state), host=args.host, port=args.port, controller=controller,
                 ready_file=args.ready_file, log_level=args.log_level, announce_json=args.json)
