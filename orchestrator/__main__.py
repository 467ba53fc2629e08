"""Allow `python -m orchestrator` as a synonym of the `orchestrate` command."""

from .cli import main

main()
