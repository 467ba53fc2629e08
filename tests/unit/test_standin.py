"""The stand-in agent CLI of the integration tests, run on the host against a model API mock of the test's own."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

STANDIN = Path(__file__).resolve().parents[1] / "images" / "standin" / "standin.py"


class MockApi(ThreadingHTTPServer):
    requests: list[dict[str, Any]]


class Handler(BaseHTTPRequestHandler):
    server: MockApi

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.server.requests.append({"path": self.path, "headers": headers, "body": json.loads(body)})
        answer = b'{"content": "mock answer"}'
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def mock_api() -> Iterator[MockApi]:
    server = MockApi(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_standin(tmp_path: Path, cli: str, arguments: list[str], env: dict[str, str],
                stdin: str = "") -> subprocess.CompletedProcess[str]:
    link = tmp_path / cli
    link.symlink_to(STANDIN)
    return subprocess.run([sys.executable, str(link), *arguments], input=stdin, capture_output=True, text=True,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env}, timeout=30, check=False)


def test_claude_calls_base_url(tmp_path: Path, mock_api: MockApi) -> None:
    base = f"http://127.0.0.1:{mock_api.server_port}"
    env = {"ANTHROPIC_BASE_URL": base, "ANTHROPIC_API_KEY": "placeholder"}

    completed = run_standin(tmp_path, "claude", ["--print", "--dangerously-skip-permissions", "--output-format",
                                                  "text", "hello model"], env)

    assert completed.returncode == 0, completed.stderr
    request = mock_api.requests[0]
    assert request["path"] == "/v1/messages"
    assert request["headers"]["x-api-key"] == "placeholder"
    assert request["body"]["messages"][0]["content"] == "hello model"
    assert "mock answer" in completed.stdout
    record = json.loads((tmp_path / "standin-claude.json").read_text(encoding="utf-8"))
    assert record["status"] == 200


def test_codex_reads_stdin_and_bearer(tmp_path: Path, mock_api: MockApi) -> None:
    env = {"OPENAI_BASE_URL": f"http://127.0.0.1:{mock_api.server_port}/v1", "OPENAI_API_KEY": "placeholder"}

    completed = run_standin(tmp_path, "codex", ["exec", "--dangerously-bypass-approvals-and-sandbox",
                                                 "--skip-git-repo-check", "--ephemeral", "--color", "never", "-"],
                            env, stdin="from stdin")

    assert completed.returncode == 0, completed.stderr
    request = mock_api.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == "Bearer placeholder"
    assert request["body"]["messages"][0]["content"] == "from stdin"


def test_unknown_flag_rejected(tmp_path: Path) -> None:
    completed = run_standin(tmp_path, "claude", ["--print", "--yolo", "hello"], {})

    assert completed.returncode == 2
    assert "unrecognized arguments: --yolo" in completed.stderr


def test_no_base_url_reports_no_api(tmp_path: Path) -> None:
    completed = run_standin(tmp_path, "aider", ["--message-file", str(STANDIN), "--yes-always"], {})

    assert completed.returncode == 0, completed.stderr
    record = json.loads((tmp_path / "standin-aider.json").read_text(encoding="utf-8"))
    assert record["api"] is None
    assert record["reason"] == "ANTHROPIC_BASE_URL is unset"
