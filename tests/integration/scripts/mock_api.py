"""A mock model API for the egress tests: it records what it receives and answers like a streaming API.

It runs in a test container on an internal Docker network of the test's own.
Each request is printed as one JSON line (method, path, headers, body size),
so a test can check from the container's output which key arrived. Every
answer is a short server-sent event stream that names the mock, so a test can
also tell which mock answered.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("MOCK_NAME", "mock")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                  "body_bytes": len(body)}
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
        events = b"".join(b"event: delta\ndata: {\"text\": \"%s part %d\"}\n\n" % (NAME.encode(), index)
                          for index in range(3))
        echo = self.path.endswith("/echo")
        if echo:
            # A careless upstream that reflects the request's headers, key included, in its answer.
            events = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        if echo:
            self.send_header("X-Echo-Key", self.headers.get("x-api-key", ""))
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(events)))
        self.end_headers()
        self.wfile.write(events)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("MOCK_PORT", "8080"))), Handler)
    print("mock ready", flush=True)
    server.serve_forever()
