"""orchestrate: run AI coding agents in parallel, each in its own hardened container."""

__version__ = "0.1.0"
