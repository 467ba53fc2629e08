"""An agent for the egress tests: it uses its one route out and tries every other one, then reports.

Usage: egress_probe.py MODE SETTINGS_JSON, where MODE is
  probe  call the API through the base URL, then try the forbidden routes in SETTINGS_JSON["connect"],
         ["absolute"], ["direct"] and ["resolve"], and save everything the agent can see;
  loop   call the API until SETTINGS_JSON["failures"] calls in a row fail, recording each outcome;
  burst  call the API SETTINGS_JSON["count"] times.
Results go to /workspace/output/egress.json; what the agent could read goes to seen.txt next to it.
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

OUTPUT = Path("/workspace/output")


def call_api(path: str = "/v1/messages") -> dict[str, object]:
    request = urllib.request.Request(
        os.environ["ANTHROPIC_BASE_URL"] + path, data=b'{"prompt": "hello"}', method="POST",
        headers={"x-api-key": os.environ.get("ANTHROPIC_API_KEY", "none"), "Content-Type": "application/json"},
    )
    # The base URL is reached directly, as NO_PROXY sets; a proxy handler would only add a detour.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return {"status": response.status, "body": response.read().decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        return {"status": 0, "error": repr(exc)}


def proxy_exchange(raw: bytes) -> str:
    """Send raw bytes to the broker as a proxy and return its status line, or the error."""
    proxy = urlsplit(os.environ["HTTPS_PROXY"])
    try:
        with socket.create_connection((proxy.hostname, proxy.port), timeout=5) as connection:
            connection.sendall(raw)
            return connection.recv(4096).decode(errors="replace").split("\r\n")[0]
    except OSError as exc:
        return f"error: {exc!r}"


def direct(target: str) -> str:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return "connected"
    except OSError as exc:
        return f"error: {exc!r}"


def resolve(name: str) -> dict[str, object]:
    started = time.monotonic()
    try:
        addresses = sorted({info[4][0] for info in socket.getaddrinfo(name, 80)})
        outcome: object = addresses
    except OSError as exc:
        outcome = f"error: {exc!r}"
    return {"result": outcome, "seconds": round(time.monotonic() - started, 3)}


def seen() -> str:
    """Return what a process in the sandbox can read that could hold a key: variables, /proc, home and /tmp."""
    parts = [repr(dict(os.environ))]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for name in ("environ", "cmdline"):
                try:
                    parts.append((proc / name).read_bytes().decode(errors="replace"))
                except OSError:
                    pass
    for folder in (Path.home(), Path("/tmp"), Path("/etc")):
        for path in folder.rglob("*"):
            try:
                if path.is_file() and path.stat().st_size < 1_000_000:
                    parts.append(path.read_bytes().decode(errors="replace"))
            except OSError:
                pass
    return "\n".join(parts)


def probe(settings: dict[str, list[str]]) -> dict[str, object]:
    results: dict[str, object] = {"api": call_api(), "echo": call_api("/v1/echo")}
    results["connect"] = {
        target: proxy_exchange(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        for target in settings.get("connect", [])
    }
    results["absolute"] = {
        url: proxy_exchange(f"GET {url} HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n\r\n".encode())
        for url in settings.get("absolute", [])
    }
    results["direct"] = {target: direct(target) for target in settings.get("direct", [])}
    results["resolve"] = {name: resolve(name) for name in settings.get("resolve", [])}
    results["resolv_conf"] = Path("/etc/resolv.conf").read_text()
    return results


def loop(settings: dict[str, int]) -> dict[str, object]:
    outcomes = []
    failures = 0
    while failures < settings["failures"] and len(outcomes) < 600:
        outcome = call_api()
        outcomes.append(outcome["status"])
        if outcome["status"] == 200:
            failures = 0
            (OUTPUT / "first-ok").touch()
        else:
            failures += 1
        time.sleep(0.1)
    return {"outcomes": outcomes, "direct_after": [direct(target) for target in settings.get("direct", [])]}


def main() -> None:
    mode, settings = sys.argv[1], json.loads(sys.argv[2])
    if mode == "probe":
        results = probe(settings)
    elif mode == "loop":
        results = loop(settings)
    else:
        results = {"statuses": [call_api()["status"] for _ in range(settings["count"])]}
    (OUTPUT / "egress.json").write_text(json.dumps(results, indent=2))
    (OUTPUT / "seen.txt").write_text(seen())


if __name__ == "__main__":
    main()
