"""What of a session's output reaches the customer's terminal in watch and play.

The engineer writes that output; nothing in it may make root's terminal answer (the
answer is read by root's shell as typed input) or set root's clipboard.
"""

from __future__ import annotations

import os
import pty
import select
import tty

import pytest

from tether.agent.recording.terminal_safety import (
    TerminalFilter,
    discard_typeahead,
    printable,
    safe_output,
)

ESC = "\x1b"

DROPPED = {
    "OSC 52 clipboard, BEL": f"{ESC}]52;c;cm0gLXJmIH4K\x07",
    "OSC 52 clipboard, ST": f"{ESC}]52;c;cm0gLXJmIH4K{ESC}\\",
    "OSC 50 font query": f"{ESC}]50;?\x07",
    "OSC 21t title query": f"{ESC}]21t{ESC}\\",
    "DCS DECRQSS": f"{ESC}P$qm{ESC}\\",
    "APC": f"{ESC}_Gf=100;AAAA{ESC}\\",
    "PM": f"{ESC}^private{ESC}\\",
    "SOS": f"{ESC}Xstart of string{ESC}\\",
    "DSR cursor position": f"{ESC}[6n",
    "DSR private": f"{ESC}[?996n",
    "DA primary": f"{ESC}[c",
    "DA secondary": f"{ESC}[>0c",
    "window report": f"{ESC}[21t",
    "window size report": f"{ESC}[18t",
    "DECREQTPARM": f"{ESC}[1x",
    "DECRQM": f"{ESC}[?2004$p",
    "XTVERSION": f"{ESC}[>0q",
    "DECID": f"{ESC}Z",
    "ENQ answerback": "\x05",
    "C1 CSI DSR": "\x9b6n",
    "C1 OSC 52": "\x9d52;c;cm0gLXJmIH4K\x9c",
    "DCS ended by C1 ST": f"{ESC}P+q544e\x9c",
}


@pytest.mark.parametrize("sequence", DROPPED.values(), ids=DROPPED.keys())
def test_sequences_that_make_the_terminal_answer_or_set_the_clipboard_are_dropped(
    sequence: str,
) -> None:
    assert safe_output(f"before{sequence}after") == "beforeafter"


@pytest.mark.parametrize("sequence", DROPPED.values(), ids=DROPPED.keys())
def test_a_dropped_sequence_split_across_chunks_is_still_dropped(sequence: str) -> None:
    text = f"before{sequence}after"
    for cut in range(1, len(text)):
        screen = TerminalFilter()
        assert screen.feed(text[:cut]) + screen.feed(text[cut:]) == "beforeafter", cut
    screen = TerminalFilter()  # one character at a time
    assert "".join(screen.feed(ch) for ch in text) == "beforeafter"


KEPT = [
    f"{ESC}[1;31mred{ESC}[0m",
    f"{ESC}[38;5;208morange{ESC}[48;2;1;2;3m",
    f"{ESC}[H{ESC}[2J{ESC}[10;20H{ESC}[K{ESC}[3A{ESC}[2C",
    f"{ESC}[?25l{ESC}[?1049h{ESC}[?1049l{ESC}[?25h",
    f"{ESC}[1;24r{ESC}7{ESC}8{ESC}M{ESC}(0qqq{ESC}(B",
    f"{ESC}[2 q{ESC}[4S",
    "tab\there\r\nbell\x07 back\b ünïcødé €",
]


@pytest.mark.parametrize("text", KEPT)
def test_colours_cursor_movement_and_text_are_kept(text: str) -> None:
    assert safe_output(text) == text
    screen = TerminalFilter()
    assert "".join(screen.feed(ch) for ch in text) == text


REPORTING = {
    "mouse tracking": (f"{ESC}[?1000h", ""),
    "any-event mouse, SGR encoding": (f"{ESC}[?1003;1006h", ""),
    "focus events": (f"{ESC}[?1004h", ""),
    "bracketed paste": (f"{ESC}[?2004h", ""),
    "alternate screen kept, mouse taken out": (f"{ESC}[?1049;1000;25h", f"{ESC}[?1049;25h"),
    "turning mouse tracking off is kept": (f"{ESC}[?1000l", f"{ESC}[?1000l"),
    "cursor shown": (f"{ESC}[?25h", f"{ESC}[?25h"),
}


@pytest.mark.parametrize(("sequence", "shown"), REPORTING.values(), ids=REPORTING.keys())
def test_modes_that_make_the_terminal_report_root_s_mouse_focus_or_pastes_are_not_set(
    sequence: str, shown: str
) -> None:
    """Left on after the view, they would have root's shell read a sequence at every
    mouse move; the picture does not need them."""
    assert safe_output(f"a{sequence}b") == f"a{shown}b"
    # Split anywhere, the same.
    for cut in range(1, len(sequence)):
        terminal = TerminalFilter()
        assert terminal.feed(f"a{sequence[:cut]}") + terminal.feed(f"{sequence[cut:]}b") == (
            f"a{shown}b"
        )


def test_a_control_inside_a_query_cannot_complete_it_later() -> None:
    # A terminal runs a newline inside CSI and still takes the "n": the filter must
    # not pass "ESC [ 6" and leave the terminal waiting for its end.
    assert safe_output(f"{ESC}[6\nn{ESC}[6{ESC}[c") == "\nn"


def test_an_unfinished_sequence_at_a_restart_is_forgotten() -> None:
    screen = TerminalFilter()
    assert screen.feed(f"ok{ESC}]52;c;") == "ok"
    screen.reset()
    assert screen.feed("visible") == "visible"


def test_an_endless_string_swallows_everything_until_its_end() -> None:
    screen = TerminalFilter()
    assert screen.feed(f"{ESC}]52;c;" + "A" * 100_000) == ""
    assert screen.feed(f"{ESC}\\after") == "after"


def test_names_are_shown_with_control_characters_as_question_marks() -> None:
    assert printable(f"upload /tmp/{ESC}]52;c;eA==\x07x (5 bytes)") == (
        "upload /tmp/?]52;c;eA==?x (5 bytes)"
    )


def test_typeahead_the_terminal_left_is_thrown_away() -> None:
    leader, follower = pty.openpty()
    try:
        tty.setraw(follower)
        os.write(leader, b"\x1b[24;80R")  # a terminal's answer, waiting to be read
        assert select.select([follower], [], [], 5)[0]  # it has arrived
        with os.fdopen(os.dup(follower), "r") as stdin:
            discard_typeahead(stdin)
        os.set_blocking(follower, False)
        with pytest.raises(BlockingIOError):
            os.read(follower, 100)
    finally:
        os.close(leader)
        os.close(follower)
