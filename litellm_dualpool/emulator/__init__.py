"""An emulated vLLM server: OpenAI-compatible HTTP on loopback, timed by the sim engine model.

``litellm-dualpool emulate --model llama-3-70b --gpu a100 --max-model-len 8192
--max-num-seqs 128 --port 8001 [--speedup 10] [--instant] [fault flags]``

What a client sees is what a vLLM 0.32 server would give it:

* ``POST /v1/chat/completions`` and ``POST /v1/completions``, JSON or SSE (vLLM chunk shapes;
  ``stream_options.include_usage`` -> a last chunk with ``choices: []`` and usage;
  ``continuous_usage_stats`` -> usage on every chunk); ``GET /v1/models`` with
  ``max_model_len`` on each card; ``GET /health``; ``GET /metrics`` with vLLM's names
  (``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
  legacy ``vllm:gpu_cache_usage_perc``, ``vllm:num_preemptions_total``,
  ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``, ``vllm:request_success_total``,
  ``vllm:time_to_first_token_seconds``, ``vllm:e2e_request_latency_seconds``,
  ``vllm:request_time_per_output_token_seconds``; latencies in emulated seconds, i.e. wall
  seconds x ``--speedup``, what the emulated GPU server would report).
* ``usage.prompt_tokens`` exact: the chat template rendered and tokenized with the real Llama-3
  or Qwen3 BPE (:mod:`.prompt`). ``completion_tokens`` equals the tokens of the generated
  filler text. Output length: ``min(max_tokens, natural)``; ``natural`` from
  ``--output-len-dist``, raised by ``min_tokens``, unbounded with ``ignore_eos: true``.
* vLLM's length rules and exact error bodies, current or legacy (:mod:`.validation`, matched
  against the vLLM 0.32.0 source).
* Timing from :class:`litellm_dualpool.sim.engine.Engine` (continuous batching, chunked prefill,
  KV blocks, preemption, roofline step times) run in virtual time = wall time x ``--speedup``
  (:mod:`.backend`); ``--instant`` skips the engine (for proxy-overhead benchmarks).
* Fault knobs (:mod:`.faults`), as flags and at run time via ``POST /admin/faults`` (loopback
  only): error_rate, fail_next, latency_seconds, hang_rate, drop_rate, refuse (503 | connection),
  refuse_seconds, stall, no_usage, error_format.

For tests and demos, :func:`litellm_dualpool.emulator.testing.start_emulator` runs one as a
subprocess on a free port and waits for ``/health``.
"""
