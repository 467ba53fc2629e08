"""The egress broker: the one route out of the sandbox for agents with `network: allowlist`.

It runs in its own hardened container and imports nothing outside the standard
library, so the base image's python3 runs it from the package source mounted
read-only. The orchestrator side (networks, start, audit) is orchestrator.egress.
"""
