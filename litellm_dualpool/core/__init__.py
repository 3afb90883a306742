"""The pure core: request shape, category, calibration, output budget and dispatch policy.

Nothing here imports litellm, prometheus_client, web frameworks or asyncio; time and
randomness are passed in. The simulator, the planner and the LiteLLM glue all call this code.
"""
