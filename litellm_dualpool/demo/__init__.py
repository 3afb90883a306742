"""The main job (`litellm-dualpool demo`, `make run`): emulated vLLM pools behind the real LiteLLM
proxy with the plugin, a realistic offline workload replayed through it, and a report.

workload.py / lengths.py say what each request is; corpus.py / synth.py write its text;
orchestrator.py starts and stops the processes; replay.py sends the load; report.py reads the
proxy's metrics and renders the result; command.py is the CLI entry.
"""
