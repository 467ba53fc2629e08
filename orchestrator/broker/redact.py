"""Masking of an API key that an upstream reflects back in its response, before the agent reads it.

Some APIs echo request headers (debug routes, error messages that quote the
header), so the key the broker adds could come back to the agent in the
response. The broker masks every exact occurrence with asterisks of the same
length, so Content-Length stays true. Bytes that could be the start of a key
split across two reads are held back until the next read shows whether they are.

NOTE: only the exact bytes are masked. An upstream that returns the key encoded
(base64, JSON escapes, compressed despite Accept-Encoding: identity) still
passes it through.
"""

from __future__ import annotations

MASK = b"*"


class Redactor:
    """A stream filter that masks exact occurrences of the given secrets."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = list(secrets)
        self._secrets = sorted({secret.encode("latin-1") for secret in secrets if secret}, key=len, reverse=True)
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        """Return the bytes that are safe to pass on; keep back a tail that may begin a secret."""
        text = self._mask(self._held + data)
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep:] if keep else b""
        return text[:len(text) - keep]

    def flush(self) -> bytes:
        """Return what was held back, at the end of the stream, where it can no longer become a secret."""
        held, self._held = self._held, b""
        return held

    def _mask(self, text: bytes) -> bytes:
        for secret in self._secrets:
            text = text.replace(secret, MASK * len(secret))
        return text

    def _partial_tail(self, text: bytes) -> int:
        """Return the length of the longest tail of `text` that is a proper prefix of a secret."""
        longest = 0
        for secret in self._secrets:
            for size in range(min(len(secret) - 1, len(text)), longest, -1):
                if text.endswith(secret[:size]):
                    longest = size
                    break
        return longest
