"""The sidecar daemon: schedules, the lease across replicas, health and metrics, alerts.

It sits beside the CLI (``cli``/``daemon`` -> ``actions`` -> engine): every job is an action
run with a cancel token, and what the daemon reports it reads from the action's typed result.
"""
