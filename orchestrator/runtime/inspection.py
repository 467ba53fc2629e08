"""Read the security-relevant settings of a container out of Docker's inspect data."""

from __future__ import annotations

from typing import Any

from ..seccomp import text_sha256


def security_summary(inspect: dict[str, Any]) -> dict[str, Any]:
    """Return the effective isolation settings of a container, as recorded in the audit log."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    return {
        "network_mode": host.get("NetworkMode"),
        "networks": sorted((inspect.get("NetworkSettings") or {}).get("Networks") or {}),
        "cap_drop": host.get("CapDrop") or [],
        "cap_add": host.get("CapAdd") or [],
        "privileged": host.get("Privileged"),
        "read_only_rootfs": host.get("ReadonlyRootfs"),
        # A seccomp profile is kilobytes of JSON: its hash identifies it (configs/seccomp/agent.json).
        "security_opt": [_short_option(option) for option in host.get("SecurityOpt") or []],
        "user": config.get("User"),
        "runtime": host.get("Runtime"),
        "limits": {
            "nano_cpus": host.get("NanoCpus"),
            "memory": host.get("Memory"),
            "memory_swap": host.get("MemorySwap"),
            "pids": host.get("PidsLimit"),
        },
        "mounts": sorted(
            (
                {"source": item.get("Source"), "target": item.get("Destination"), "read_only": not item.get("RW")}
                for item in inspect.get("Mounts") or []
            ),
            key=lambda item: str(item["target"]),
        ),
        "tmpfs": sorted((host.get("Tmpfs") or {}).items()),
        # Names only: the values may be secrets the manifest passes on purpose.
        "env_names": sorted(item.partition("=")[0] for item in config.get("Env") or []),
    }


def _short_option(option: str) -> str:
    if option.startswith("seccomp=") and option not in ("seccomp=unconfined", "seccomp:unconfined"):
        return f"seccomp=<profile sha256 {text_sha256(option[len('seccomp='):])}>"
    return option
