"""Run one red-team scenario inside an agent container and write its verdict.

Usage: python3 /workspace/src/attack.py SCENARIO. The verdict goes to
/workspace/output/<agent>/verdict.json; a scenario that gets killed before it
can write one (a CPU spin past its timeout) is judged on the host alone.
"""

import sys

import filesystem
import leaks
import network
import privilege
import publisher
import resources
from common import write_verdict

SCENARIOS = {
    **network.SCENARIOS,
    **privilege.SCENARIOS,
    **filesystem.SCENARIOS,
    **publisher.SCENARIOS,
    **resources.SCENARIOS,
    **leaks.SCENARIOS,
}


def main():
    name = sys.argv[1]
    if name not in SCENARIOS:
        print(f"unknown scenario {name}; known: {', '.join(sorted(SCENARIOS))}", file=sys.stderr)
        return 2
    write_verdict(SCENARIOS[name]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
