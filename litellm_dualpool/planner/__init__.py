"""The planner: what each pool of a split fleet needs and what the split saves against the
strongest homogeneous fleet, before anything is deployed.

    model      the analytical model: length mixes, hardware, per-pool search, baselines, plans
    queueing   waiting-time model of a pool's prefill queue (M/G/c)
    vllm_bench per-instance throughputs read from ``vllm bench serve`` result files
    emit       a plan as a LiteLLM YAML and ``vllm serve`` scripts (CUDA and ROCm)
    plots      figures of a plan (needs matplotlib, the ``[tools]`` extra)
    command    the ``litellm-dualpool plan`` command

Imports only the core, config and the simulator's engine model (never the proxy).
"""

from litellm_dualpool.planner.model import Plan, Planner, make_plan, predict_saving

__all__ = ["Plan", "Planner", "make_plan", "predict_saving"]
