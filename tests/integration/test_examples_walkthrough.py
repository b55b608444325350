"""examples/README.md runs as written: each ``bash`` block's commands in order, in a fresh QE_HOME.

A command is a line of a ``bash`` block; the ``#> text`` lines under it are text its output (stdout
and stderr) must contain. Blocks fenced as ``text`` are for reading only. The commands run in a
temporary folder holding a link to ``examples/``, with this environment's ``bin`` first on the
PATH, so ``python`` and ``quant-engine`` are the project's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WALKTHROUGH = REPO_ROOT / "examples" / "README.md"


def walkthrough_steps(markdown: str) -> list[tuple[str, list[str]]]:
    """``(command, expected texts)`` for each command of each ``bash`` block, in order."""
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M):
        for line in block.splitlines():
            if line.startswith("#> "):
                if not steps:
                    raise ValueError(f"expected output before any command: {line!r}")
                steps[-1][1].append(line[3:])
            elif line.strip() and not line.startswith("#"):
                steps.append((line, []))
    return steps


def test_the_parser_reads_commands_and_their_expected_output() -> None:
    markdown = "```text\nignored\n```\n```bash\na --x\n#> one\n#> two\n# a comment\nb\n```\n```bash\nc\n#> three\n```\n"
    assert walkthrough_steps(markdown) == [("a --x", ["one", "two"]), ("b", []), ("c", ["three"])]
    with pytest.raises(ValueError, match="before any command"):
        walkthrough_steps("```bash\n#> orphan\n```\n")


def test_the_walkthrough_runs_as_written(tmp_path: Path, qe_home: Path) -> None:
    steps = walkthrough_steps(WALKTHROUGH.read_text())
    commands = [command.split()[0] for command, _ in steps]
    assert commands[0] == "python" and "quant-engine" in commands and len(steps) >= 7, commands
    assert all(expected for _, expected in steps[:3]), "the first steps must say what they print"
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    env = {
        **os.environ,
        "QE_HOME": str(qe_home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for command, expected in steps:
        result = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command!r} failed (exit {result.returncode}):\n{output[-3000:]}"
        for text in expected:
            assert text in output, f"{command!r} did not print {text!r}:\n{output[-3000:]}"
