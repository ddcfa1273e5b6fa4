"""Showing a session's output on the customer's own terminal without letting it talk back.

The engineer writes what a support session prints, and ``tether access watch`` and
``tether access play`` show it on root's terminal. Two kinds of escape sequence there
would let the engineer reach past the picture:

- strings (OSC, DCS, APC, PM, SOS): OSC 52 sets root's clipboard, OSC 50 and DECRQSS
  (a DCS) ask the terminal questions, and others set titles, fonts or links;
- queries whose reply the terminal *types* into the tty (DSR ``CSI 6 n``, DA
  ``CSI c``, window reports ``CSI ... t``, DECREQTPARM ``CSI x``, DECRQM ``CSI ? N $ p``,
  XTVERSION ``CSI > q``, DECID ``ESC Z``, ENQ): after Ctrl-C the reply sits in the tty
  and root's shell reads it as typed input.

A third kind is taken out of the sequences that set private modes: mouse tracking,
focus events and bracketed paste (``CSI ? 1000 h`` and kin) make the terminal report
root's own mouse, focus and pastes as input, and stay on after the view ends, so root's
shell would read escape sequences at every mouse move. (Other modes in the same
sequence, the alternate screen say, are kept.)

:class:`TerminalFilter` drops all of these and keeps what draws the picture (text,
colours, cursor movement, erasing, modes). It only ever passes complete sequences it
has checked, so what it lets through cannot start something the terminal would
finish with later text. :func:`discard_typeahead` throws away anything a terminal
still replied; :func:`printable` shows a name with its control characters as ``?``.
"""

from __future__ import annotations

import contextlib
import sys
import termios
from typing import TextIO

#: Control characters (C0) passed through: tab, newline, carriage return, backspace,
#: bell, and the charset shifts. ENQ (answerback) and the rest are dropped.
_KEPT_C0 = frozenset("\t\n\r\b\x07\x0e\x0f")
#: What follows ESC to open a string: OSC, DCS, APC, PM, SOS.
_STRING_OPENERS = frozenset("]P_^X")
#: 8-bit (C1) introducers, as the ESC sequence each stands for.
_C1 = {"\x9b": "[", "\x9d": "]", "\x90": "P", "\x9f": "_", "\x9e": "^", "\x98": "X"}
#: What ends a string (BEL for OSC, ST as ESC \ or C1, CAN and SUB abort it).
_STRING_ENDS = frozenset("\x07\x9c\x18\x1a")
#: CSI finals whose every form makes the terminal reply (DSR, DA, XTWINOPS, DECREQTPARM).
_REPLY_FINALS = frozenset("nctx")
#: (intermediates + final) that make it reply: DECRQM, DECRQPSR, DECRQCRA.
_REPLY_TAILS = frozenset({"$p", "$w", "*y"})
#: (private prefix, final) that make it reply: XTVERSION, kitty keyboard flags, XTSMGRAPHICS.
_REPLY_PRIVATE = frozenset({(">", "q"), ("?", "u"), ("?", "S")})
#: Longest sequence buffered; a longer one is not drawing anything and is dropped.
_MAX_SEQUENCE = 256
#: Private modes whose setting makes the terminal send input of its own: mouse tracking
#: (X10, normal, highlight, button, any-event and their encodings), focus events,
#: bracketed paste.
_REPORTING_MODES = frozenset(
    {"9", "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1015", "1016", "2004"}
)

_GROUND, _ESC, _ESC_MORE, _CSI, _STRING, _STRING_ESC = range(6)


def _without_reporting_modes(sequence: str) -> str:
    """A complete ``ESC [ ...`` sequence without the input-reporting modes it would set
    (``""`` if nothing else is left)."""
    if not sequence.startswith("\x1b[?") or sequence[-1] != "h":
        return sequence
    modes = sequence[3:-1].split(";")
    kept = [mode for mode in modes if mode not in _REPORTING_MODES]
    if len(kept) == len(modes):
        return sequence
    return f"\x1b[?{';'.join(kept)}h" if kept else ""


def _reply_provoking(sequence: str) -> bool:
    """Whether a complete ``ESC [ ...`` sequence asks the terminal for a reply."""
    body, final = sequence[2:-1], sequence[-1]
    if final in _REPLY_FINALS:
        return True
    intermediates = body.lstrip("0123456789:;<=>?")
    if intermediates + final in _REPLY_TAILS:
        return True
    return bool(body) and (body[0], final) in _REPLY_PRIVATE


class TerminalFilter:
    """A streaming filter over terminal output (text already decoded from UTF-8).

    Feed it the output in whatever pieces it comes: a sequence cut between two pieces
    is held until it is complete, then passed or dropped as a whole.
    """

    def __init__(self) -> None:
        self._state = _GROUND
        self._pending: list[str] = []

    def reset(self) -> None:
        """Forget any sequence half seen (a new stream starts)."""
        self._state = _GROUND
        self._pending = []

    def feed(self, text: str) -> str:
        """What of ``text`` is safe to write to a terminal now."""
        out: list[str] = []
        for ch in text:
            self._step(ch, out)
        return "".join(out)

    def _step(self, ch: str, out: list[str]) -> None:
        state = self._state
        if state == _GROUND:
            if ch == "\x1b":
                self._state, self._pending = _ESC, [ch]
            elif ch in _C1:
                self._state, self._pending = _ESC, ["\x1b"]
                self._step(_C1[ch], out)
            elif (ch >= " " and not "\x7f" <= ch <= "\x9f") or ch in _KEPT_C0:
                out.append(ch)
            # any other C0 or C1 control is dropped
        elif state == _ESC:
            if ch == "[":
                self._state = _CSI
                self._pending.append(ch)
            elif ch in _STRING_OPENERS:
                self._state, self._pending = _STRING, []
            elif " " <= ch <= "/":
                self._state = _ESC_MORE
                self._pending.append(ch)
            elif "0" <= ch <= "~":
                if ch != "Z":  # DECID: the terminal answers with its attributes
                    out.append("\x1b" + ch)
                self.reset()
            else:  # not a sequence after all: drop the ESC, take ch as text
                self.reset()
                self._step(ch, out)
        elif state == _ESC_MORE:
            if " " <= ch <= "~" and len(self._pending) < _MAX_SEQUENCE:
                self._pending.append(ch)
                if ch >= "0":
                    out.append("".join(self._pending))
                    self.reset()
            else:
                self.reset()
                self._step(ch, out)
        elif state == _CSI:
            if "\x20" <= ch <= "\x3f" and len(self._pending) < _MAX_SEQUENCE:
                self._pending.append(ch)
            elif "\x40" <= ch <= "\x7e":
                sequence = _without_reporting_modes("".join(self._pending) + ch)
                if sequence and not _reply_provoking(sequence):
                    out.append(sequence)
                self.reset()
            else:  # a control inside, or too long: dropped; ch is taken afresh
                self.reset()
                self._step(ch, out)
        elif state == _STRING:
            if ch == "\x1b":
                self._state = _STRING_ESC
            elif ch in _STRING_ENDS:
                self.reset()
        else:  # _STRING_ESC: ESC \ ends the string; ESC and anything else starts anew
            self.reset()
            if ch != "\\":
                self._state, self._pending = _ESC, ["\x1b"]
                self._step(ch, out)


def safe_output(text: str) -> str:
    """``text`` (a whole piece of output) with what :class:`TerminalFilter` drops removed."""
    return TerminalFilter().feed(text)


def printable(text: str) -> str:
    """``text`` with each character that is not printable shown as ``?``.

    For names the engineer chose (files being transferred), printed on one line.
    """
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def discard_typeahead(stream: TextIO | None = None) -> None:
    """Throw away input waiting on ``stream`` (stdin) if it is a terminal.

    Whatever the terminal answered while it showed a session would otherwise reach the
    next program that reads it -- root's shell -- as if typed.
    """
    stream = sys.stdin if stream is None else stream
    with contextlib.suppress(OSError, ValueError):
        if stream.isatty():
            termios.tcflush(stream.fileno(), termios.TCIFLUSH)
