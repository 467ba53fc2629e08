"""Filter an agent's terminal output before it reaches the user's terminal.

A program in the sandbox writes escape sequences for the user's terminal, which
runs outside the sandbox. Most of them only draw: colours, cursor moves, the
alternate screen, the title. Some reach further. OSC 52 writes the clipboard,
so the next paste into a host shell runs the agent's command. iTerm2's OSC 1337
writes files and kitty's APC graphics read them on the user's machine. DCS strings
reach a terminal multiplexer's outer terminal. A title report (CSI 21 t) types
agent-chosen text into whatever reads the terminal next. The filter passes
drawing and drops the rest; it keeps its parser state between chunks, so a
sequence split across reads is judged as one.

An OSC that passes is rebuilt from its printable characters and ended with ST,
so the terminal sees exactly the sequence that was judged. DCS, APC, PM and SOS
strings are dropped whole with their introducer, so the terminal never enters
them. C1 controls (U+0080 to U+009F, and bare bytes 0x80 to 0x9F outside a
UTF-8 character) are dropped, because an 8-bit terminal would read 0x9D as OSC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

ESC = 0x1B
BEL = 0x07
CAN = 0x18
SUB = 0x1A

# OSC commands that only draw or mark: titles (0, 1, 2), the working folder (7), hyperlinks (8), colours
# (4, 10 to 19, and their resets 104 and 110 to 119), and shell prompt marks (133).
ALLOWED_OSC = frozenset({0, 1, 2, 4, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                         104, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 133})
# Window operations (CSI Ps t) that pass: size reports (14, 16, 18) and the title stack (22, 23). The rest move,
# resize or iconify the user's window, or report its title, which types agent-chosen text into the terminal.
ALLOWED_WINDOW_OPS = frozenset({14, 16, 18, 22, 23})
# Longer sequences are dropped: no terminal feature needs more, and the filter's buffer stays bounded.
MAX_OSC = 8192
MAX_CSI = 256

# Turns off the terminal modes that a program can leave on when it ends or the user detaches. They are mouse and
# focus reports, bracketed paste, application cursor keys and keypad, the kitty keyboard protocol, xterm's
# modifyOtherKeys, synchronized output, a hidden cursor, text attributes, and a line-drawing character set.
MODE_RESET = (b"\x1b(B\x0f\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1005l\x1b[?1006l\x1b[?1015l\x1b[?1004l\x1b[?2004l"
              b"\x1b[?2026l\x1b[?1l\x1b>\x1b[<99u\x1b[>4m\x1b[0m\x1b[?25h")
ALTERNATE_SCREEN_OFF = b"\x1b[?1049l"
_ALTERNATE_MODES = frozenset({"47", "1047", "1049"})
_SECOND_BYTE = {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}
# The bytes that the ground state does not pass unchanged: ESC, and everything outside ASCII.
_SPECIAL_BYTE = re.compile(rb"[\x1b\x80-\xff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f]")

_GROUND, _ESCAPE, _ESCAPE_INTERMEDIATE, _CSI, _CSI_IGNORE, _OSC, _STRING, _STRING_ESCAPE = range(8)


class TerminalFilter:
    """A filter of one output stream that keeps its parser state between chunks, which must come in order."""

    def __init__(self) -> None:
        self._state = _GROUND
        self._sequence = bytearray()
        # UTF-8 continuation bytes still due in the character being passed.
        self._continuations = 0
        self._next_low, self._next_high = 0x80, 0xBF
        # A 0xC2 lead byte held back until the next byte shows whether it starts a C1 control.
        self._held_c2 = False
        self._osc_too_long = False
        # Whether the program switched to the alternate screen and has not switched back.
        self.alternate_screen = False

    def feed(self, data: bytes) -> bytes:
        """Return the part of `data` that may reach the terminal, given everything fed before it."""
        out = bytearray()
        position = 0
        while position < len(data):
            if self._state == _GROUND and not self._held_c2 and not self._continuations:
                # Plain ASCII passes as it is, so it is copied in one slice rather than judged byte by byte.
                special = _SPECIAL_BYTE.search(data, position)
                end = len(data) if special is None else special.start()
                out += data[position:end]
                position = end
                if position == len(data):
                    break
            self._step(data[position], out)
            position += 1
        return bytes(out)

    def reset_sequence(self) -> bytes:
        """Return the bytes that turn off the modes a program may have left on, for when the relay ends."""
        return (ALTERNATE_SCREEN_OFF if self.alternate_screen else b"") + MODE_RESET

    def _step(self, byte: int, out: bytearray) -> None:
        state = self._state
        if state == _GROUND:
            self._ground(byte, out)
        elif state == _ESCAPE:
            self._escape(byte, out)
        elif state == _ESCAPE_INTERMEDIATE:
            self._escape_intermediate(byte, out)
        elif state in (_CSI, _CSI_IGNORE):
            self._csi(byte, out)
        elif state == _OSC:
            self._osc(byte, out)
        else:
            self._string(byte, out)

    def _ground(self, byte: int, out: bytearray) -> None:
        if self._held_c2:
            self._held_c2 = False
            if 0x80 <= byte <= 0x9F:
                return  # U+0080 to U+009F: a C1 control, dropped with its lead byte.
            out.append(0xC2)
            if 0x80 <= byte <= 0xBF:
                out.append(byte)
                return
        if self._continuations and self._next_low <= byte <= self._next_high:
            self._continuations -= 1
            self._next_low, self._next_high = 0x80, 0xBF
            out.append(byte)
            return
        self._continuations = 0
        if byte == ESC:
            self._state = _ESCAPE
            self._sequence = bytearray([ESC])
        elif byte == 0xC2:
            self._held_c2 = True
        elif 0x80 <= byte <= 0x9F:
            pass  # A bare C1 byte, which an 8-bit terminal would obey.
        else:
            if 0xC3 <= byte <= 0xDF:
                self._continuations = 1
            elif 0xE0 <= byte <= 0xEF:
                self._continuations = 2
            elif 0xF0 <= byte <= 0xF4:
                self._continuations = 3
            # The second byte's range of well-formed UTF-8 (RFC 3629), so an overlong or surrogate form cannot
            # carry a bare 0x80 to 0x9F byte past the filter.
            self._next_low, self._next_high = _SECOND_BYTE.get(byte, (0x80, 0xBF))
            out.append(byte)

    def _escape(self, byte: int, out: bytearray) -> None:
        if byte == ESC:
            return  # A new escape starts over the old one, as in the terminal's own parser.
        if byte in (CAN, SUB):
            self._state = _GROUND
        elif byte < 0x20:
            out.append(byte)  # A C0 control inside an escape sequence acts at once; the sequence goes on.
        elif byte == ord("["):
            self._state = _CSI
            self._sequence.append(byte)
        elif byte == ord("]"):
            self._state = _OSC
            self._sequence = bytearray()
            self._osc_too_long = False
        elif byte == ord("\\"):
            self._state = _GROUND  # ST with no string before it does nothing.
        elif byte in b"P_^X":
            self._state = _STRING  # DCS, APC, PM or SOS: dropped with its introducer.
        elif 0x20 <= byte <= 0x2F:
            self._state = _ESCAPE_INTERMEDIATE
            self._sequence.append(byte)
        elif byte >= 0x7F:
            self._state = _GROUND  # No escape sequence ends in DEL or a non-ASCII byte: the escape is dropped.
            self._ground(byte, out)
        else:
            self._sequence.append(byte)
            out.extend(self._sequence)
            self._state = _GROUND

    def _control_inside(self, byte: int, out: bytearray) -> bool:
        """Handle ESC, CAN, SUB and C0 controls inside a sequence; return whether `byte` was one of them."""
        if byte == ESC:
            self._state = _ESCAPE
            self._sequence = bytearray([ESC])
        elif byte in (CAN, SUB):
            self._state = _GROUND
        elif byte < 0x20:
            out.append(byte)
        else:
            return False
        return True

    def _escape_intermediate(self, byte: int, out: bytearray) -> None:
        if self._control_inside(byte, out):
            return
        if len(self._sequence) >= MAX_CSI or byte >= 0x7F:
            self._state = _GROUND
            self._ground(byte, out)
        else:
            self._sequence.append(byte)
            if byte >= 0x30:
                # ESC % switches the terminal out of UTF-8, after which it reads bytes this filter passed inside
                # UTF-8 characters, such as 0x9D, as C1 controls. So that sequence is dropped.
                if self._sequence[1] != ord("%"):
                    out.extend(self._sequence)
                self._state = _GROUND

    def _csi(self, byte: int, out: bytearray) -> None:
        if self._control_inside(byte, out):
            return
        if 0x40 <= byte <= 0x7E:
            if self._state == _CSI:
                self._sequence.append(byte)
                if self._csi_allowed(bytes(self._sequence[2:-1]), byte):
                    out.extend(self._sequence)
            self._state = _GROUND
        elif self._state == _CSI:
            if len(self._sequence) >= MAX_CSI or byte > 0x7E:
                self._state = _CSI_IGNORE
            else:
                self._sequence.append(byte)

    def _csi_allowed(self, parameters: bytes, final: int) -> bool:
        text = parameters.decode("ascii", "replace")
        if final == ord("t"):
            first = text.split(";")[0]
            return first.isdigit() and int(first) in ALLOWED_WINDOW_OPS
        if final == ord("i"):
            return False  # Media copy: sends the screen to the terminal's printer command.
        if final == ord("y") and text.endswith("*"):
            return False  # DECRQCRA: its checksum reply lets the program read the screen, earlier output included.
        if final in (ord("h"), ord("l")) and text.startswith("?"):
            if _ALTERNATE_MODES & set(text[1:].split(";")):
                self.alternate_screen = final == ord("h")
        return True

    def _osc(self, byte: int, out: bytearray) -> None:
        # 0x9C is ST on its own or as U+009C, but not as the continuation byte of another UTF-8 character.
        eight_bit_end = byte == 0x9C and (not self._sequence or self._sequence[-1] == 0xC2 or self._sequence[-1] < 0x80)
        if byte in (BEL, ESC) or eight_bit_end:
            self._end_osc(out)
            if byte == ESC:
                # ESC then a backslash ends the OSC, which is already written; any other escape starts anew.
                self._state = _STRING_ESCAPE
            return
        if byte in (CAN, SUB):
            self._state = _GROUND
            return
        if len(self._sequence) > MAX_OSC:
            self._osc_too_long = True  # Dropped at its end; only its end is still looked for.
            return
        self._sequence.append(byte)

    def _end_osc(self, out: bytearray) -> None:
        self._state = _GROUND
        if self._osc_too_long:
            return
        payload = bytes(self._sequence)
        if payload.endswith(b"\xc2"):
            payload = payload[:-1]  # The lead byte of U+009C, the 8-bit ST, whose second byte ended the OSC.
        number = payload.split(b";", 1)[0]
        if not number.isdigit() or int(number) not in ALLOWED_OSC:
            return
        text = _UNPRINTABLE.sub("", payload.decode("utf-8", "ignore"))
        out.extend(b"\x1b]" + text.encode("utf-8") + b"\x1b\\")

    def _string(self, byte: int, out: bytearray) -> None:
        if self._state == _STRING_ESCAPE:
            if byte == ord("\\"):
                self._state = _GROUND
            else:
                self._state = _ESCAPE
                self._sequence = bytearray([ESC])
                self._escape(byte, out)
            return
        if byte == ESC:
            self._state = _STRING_ESCAPE
        elif byte in (CAN, SUB, 0x9C):
            self._state = _GROUND


def reset_sequence(filters: Iterable[TerminalFilter]) -> bytes:
    """Return the bytes that turn off the modes left on by the programs behind `filters`, which share one terminal."""
    alternate = any(terminal_filter.alternate_screen for terminal_filter in filters)
    return (ALTERNATE_SCREEN_OFF if alternate else b"") + MODE_RESET
