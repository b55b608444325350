"""Progress: a bar that redraws on a terminal, rate-limited plain lines in logs, honest counts."""

from __future__ import annotations

import io

import pytest

from quant_engine.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_are_rate_limited_and_the_last_one_always_shows() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress(10, "fits", stream=out, tty=False, every_s=5.0, clock=clock) as progress:
        for _ in range(10):
            clock.now += 1.0
            progress.advance()
    lines = out.getvalue().splitlines()
    assert lines[0] == "fits: 0/10 (0%) elapsed 0s"
    assert lines[1] == "fits: 5/10 (50%) elapsed 5s, about 5s left"
    assert lines[-1] == "fits: 10/10 (100%) elapsed 10s"
    assert len(lines) == 3 and "\r" not in out.getvalue()


def test_terminal_bar_redraws_in_place_and_ends_its_line() -> None:
    out, clock = io.StringIO(), FakeClock()
    with Progress(4, "rounds", stream=out, tty=True, clock=clock) as progress:
        clock.now += 120.0
        progress.advance(2)
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "[" + "#" * 15 + "." * 15 + "] rounds: 2/4 (50%) elapsed 2m00s, about 2m00s left" in text


def test_counts_never_pass_the_total_and_an_empty_loop_is_complete() -> None:
    out = io.StringIO()
    progress = Progress(3, "x", stream=out, tty=False)
    progress.advance(5)
    assert progress.done == 3
    assert Progress(0, "nothing", stream=out, tty=False).line().startswith("nothing: 0/0 (100%)")


@pytest.mark.parametrize("total", [-1, 2.5, True, "3"])
def test_bad_total_is_refused_with_its_value(total: object) -> None:
    with pytest.raises(ValueError, match="total="):
        Progress(total, "x")  # type: ignore[arg-type]


def test_going_backwards_is_refused() -> None:
    with pytest.raises(ValueError, match="only goes forward"):
        Progress(3, "x", stream=io.StringIO(), tty=False).advance(-1)
