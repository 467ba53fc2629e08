"""A mock of the Anthropic Messages API, enough for Claude Code's print mode to finish one turn.

Every POST gets one assistant message, "Mock answer: DONE", as server-sent
events when the request asks for a stream and as JSON otherwise. Each request
is printed as one JSON line with its path and the x-api-key it carried, so
whoever runs it can see which key arrived. Run it on an internal Docker
network of your own; see the README's "Network access for agents".
"""

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER = "Mock answer: DONE"


def stream_events(model: str) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": ANSWER}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 3}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def message(model: str) -> bytes:
    return json.dumps({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": ANSWER}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 3},
    }).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        print(json.dumps({"path": self.path, "x-api-key": self.headers.get("x-api-key"), "bytes": len(body)}),
              flush=True)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            request = {}
        model = str(request.get("model", "mock"))
        streamed = bool(request.get("stream"))
        data = stream_events(model) if streamed else message(model)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if streamed else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    print("mock ready", flush=True)
    ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
