#!/usr/bin/env python3
"""A stand-in for the agent CLIs, for tests: installed as claude, copilot, codex and aider.

It accepts the flags of each CLI's command in agents/<profile>.yaml and rejects any
other, so a profile whose template a real CLI would not parse fails here too. Like
the real CLI it reads the prompt the way that profile delivers it, calls the model
API at the base URL the CLI reads (with the key the sandbox holds), prints the
response, and writes a file into the working folder: standin-<cli>.json. When the
base-URL variable is unset it makes no request and records that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _claude(arguments: list[str]) -> tuple[str, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="claude")
    parser.add_argument("--print", "-p", action="store_true", required=True)
    parser.add_argument("--dangerously-skip-permissions", action="store_true")
    parser.add_argument("--output-format", choices=["text", "json", "stream-json"], default="text")
    parser.add_argument("prompt")
    options = parser.parse_args(arguments)
    return options.prompt, {"kind": "anthropic", "base": "ANTHROPIC_BASE_URL", "key": "ANTHROPIC_API_KEY"}


def _copilot(arguments: list[str]) -> tuple[str, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="copilot")
    parser.add_argument("--prompt", "-p", required=True)
    for flag in ("--allow-all-tools", "--allow-all-paths", "--disable-client-telemetry", "--silent", "--no-color"):
        parser.add_argument(flag, action="store_true")
    options = parser.parse_args(arguments)
    return options.prompt, {"kind": "openai", "base": "COPILOT_PROVIDER_BASE_URL", "key": "COPILOT_PROVIDER_API_KEY"}


def _codex(arguments: list[str]) -> tuple[str, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="codex")
    commands = parser.add_subparsers(dest="command", required=True)
    exec_parser = commands.add_parser("exec")
    for flag in ("--dangerously-bypass-approvals-and-sandbox", "--skip-git-repo-check", "--ephemeral"):
        exec_parser.add_argument(flag, action="store_true")
    exec_parser.add_argument("--color", choices=["always", "never", "auto"], default="auto")
    exec_parser.add_argument("prompt", nargs="?", default="-")
    options = parser.parse_args(arguments)
    # Like codex exec: no prompt argument, or "-", reads the instructions from standard input.
    prompt = sys.stdin.read() if options.prompt == "-" else options.prompt
    return prompt, {"kind": "openai", "base": "OPENAI_BASE_URL", "key": "OPENAI_API_KEY"}


def _aider(arguments: list[str]) -> tuple[str, dict[str, str]]:
    parser = argparse.ArgumentParser(prog="aider")
    parser.add_argument("--message-file", required=True)
    for flag in ("--yes-always", "--no-git", "--no-auto-commits", "--no-check-update", "--no-show-release-notes",
                 "--analytics-disable", "--no-pretty", "--no-fancy-input"):
        parser.add_argument(flag, action="store_true")
    parser.add_argument("--input-history-file")
    parser.add_argument("--chat-history-file")
    options = parser.parse_args(arguments)
    prompt = Path(options.message_file).read_text(encoding="utf-8")
    # litellm, under aider, reads ANTHROPIC_API_BASE before ANTHROPIC_BASE_URL.
    base = "ANTHROPIC_API_BASE" if os.environ.get("ANTHROPIC_API_BASE") else "ANTHROPIC_BASE_URL"
    return prompt, {"kind": "anthropic", "base": base, "key": "ANTHROPIC_API_KEY"}


CLIS = {"claude": _claude, "copilot": _copilot, "codex": _codex, "aider": _aider}


def call_api(api: dict[str, str], prompt: str) -> dict[str, Any]:
    """POST a small request like the CLI's first model call; return what happened."""
    base = os.environ.get(api["base"])
    if not base:
        return {"api": None, "reason": f"{api['base']} is unset"}
    key = os.environ.get(api["key"], "")
    if api["kind"] == "anthropic":
        url = base.rstrip("/") + "/v1/messages"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        body = {"model": "stand-in", "max_tokens": 16, "messages": [{"role": "user", "content": prompt[:200]}]}
    else:
        url = base.rstrip("/") + "/chat/completions"
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "stand-in", "messages": [{"role": "user", "content": prompt[:200]}]}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"api": url, "status": response.status, "response": response.read(4096).decode(errors="replace")}
    except urllib.error.HTTPError as exc:
        return {"api": url, "status": exc.code, "response": exc.read(4096).decode(errors="replace")}
    except OSError as exc:
        return {"api": url, "status": None, "error": str(exc)}


def main() -> int:
    cli = Path(sys.argv[0]).name
    if cli not in CLIS:
        print(f"standin: started as {cli!r}; install it as one of {', '.join(CLIS)}", file=sys.stderr)
        return 2
    prompt, api = CLIS[cli](sys.argv[1:])
    outcome = call_api(api, prompt)
    print(json.dumps(outcome))

    record = {"cli": cli, "prompt": prompt, "argv": sys.argv[1:], **outcome}
    Path(f"standin-{cli}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    failed = outcome.get("api") is not None and outcome.get("status") != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
