"""The README is a script: after the demo, every command block runs verbatim, in order, in a fresh copy of the
repository, as a new user would type it.

Command blocks are the ```bash and ```console fences (in a console transcript, the `$ ` lines; the lines after a
command are its output, and an output starting `flops-meter: error:` means the command must fail with exit 2 and
that one line). Other fences are not commands: Python fragments, diagrams, synopses (```text). A command block is
skipped only when the line before it says why: `<!-- readme-test: skip: REASON -->` (an AWS account, the set-up
itself). Each command must exit 0 (or 2 where the transcript shows an error) without a traceback.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.repo import ROOT, tracked_copy

SKIP = re.compile(r"<!--\s*readme-test:\s*skip:\s*(?P<reason>\S.*?)\s*-->")


@dataclass
class Command:
    line: int  # where it starts in README.md
    text: str
    expect: int  # exit status


@dataclass
class Block:
    line: int
    lang: str
    commands: list[Command]
    skip: str | None


def blocks(readme: str) -> list[Block]:
    lines = readme.splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.search(previous)
        body = lines[start + 1 : end]
        if lang in ("bash", "console"):
            commands = _console(body, start + 2) if lang == "console" else _bash(body, start + 2)
            found.append(Block(start + 1, lang, commands, marker.group("reason") if marker else None))
        i = end + 1
    return found


def _joined(body: list[str], i: int) -> tuple[str, int]:
    """The command starting at body[i], with its backslash continuations; and the index after it."""
    parts = [body[i]]
    while parts[-1].rstrip().endswith("\\") and i + 1 < len(body):
        i += 1
        parts.append(body[i])
    return "\n".join(parts), i + 1


def _bash(body: list[str], first: int) -> list[Command]:
    commands, i = [], 0
    while i < len(body):
        if not body[i].strip() or body[i].lstrip().startswith("#"):
            i += 1
            continue
        text, after = _joined(body, i)
        commands.append(Command(first + i, text, 0))
        i = after
    return commands


def _console(body: list[str], first: int) -> list[Command]:
    commands, i = [], 0
    while i < len(body):
        if not body[i].startswith("$ "):
            i += 1
            continue
        text, after = _joined([body[i][2:], *body[i + 1 :]], 0)
        after += i
        output = body[after] if after < len(body) and not body[after].startswith("$ ") else ""
        commands.append(Command(first + i, text, 2 if output.startswith("flops-meter: error:") else 0))
        i = after
    return commands


def script(commands: list[Command], logs: Path) -> str:
    """One bash script: the commands in order (shell variables carry over), each checked as it ends."""
    out = ["set -u"]
    for n, c in enumerate(commands):
        where = f"README.md:{c.line}"
        log = shlex.quote(str(logs / f"{n}"))
        out.append(f"{{ {c.text}\n}} > {log}.out 2> {log}.err; rc=$?")
        out.append(
            f'if [ $rc -ne {c.expect} ] || grep -q Traceback {log}.err; then echo "{where}: exit $rc, expected '
            f'{c.expect}: "{shlex.quote(c.text)}; cat {log}.out {log}.err; exit 1; fi'
        )
        if c.expect == 2:  # one line naming the problem, never a traceback
            out.append(
                f'if [ "$(wc -l < {log}.err)" -ne 1 ] || ! grep -q "^flops-meter: error:" {log}.err; then '
                f'echo "{where}: not one error line: "{shlex.quote(c.text)}; cat {log}.err; exit 1; fi'
            )
        out.append(f'echo "ok {where}"')
    return "\n".join(out) + "\n"


def test_every_command_block_is_run_or_says_why_not() -> None:
    found = blocks((ROOT / "README.md").read_text())
    runnable = [b for b in found if b.skip is None]
    assert all(b.commands for b in found), [b.line for b in found if not b.commands]
    assert sum(len(b.commands) for b in runnable) >= 15  # the walk-through, not a token command
    for b in found:
        if b.skip is not None:
            assert len(b.skip) > 10, f"README.md:{b.line}: say why the block is skipped"
    # the demo the test runs first is what `make demo` runs
    assert "$(BIN)/flops-meter pipeline demo" in (ROOT / "Makefile").read_text()


def test_parser_reads_transcripts_and_continuations() -> None:
    readme = "\n".join(
        [
            "```console",
            "$ a --x \\",
            "    --y",
            "output",
            "$ b",
            "flops-meter: error: bad",
            "```",
            "<!-- readme-test: skip: needs an AWS account -->",
            "```bash",
            "c  # comment",
            "# only a comment",
            "```",
        ]
    )
    (console, bash) = blocks(readme)
    assert [(c.text, c.expect, c.line) for c in console.commands] == [("a --x \\\n    --y", 0, 2), ("b", 2, 5)]
    assert bash.skip == "needs an AWS account" and [c.text for c in bash.commands] == ["c  # comment"]


def test_the_readme_runs_verbatim_after_the_demo(tmp_path) -> None:
    work = tracked_copy(tmp_path / "flops-meter")
    git = ["git", "-c", "user.name=readme", "-c", "user.email=readme@example.org"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):  # `git rev-parse HEAD` works
        subprocess.run([*git, *args], cwd=work, check=True, capture_output=True)
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOPS_METER", "AWS_", "OPT_ML", "SM_"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(work))
    demo = subprocess.run(
        [str(bin_dir / "flops-meter"), "pipeline", "demo"], cwd=work, env=env, capture_output=True, text=True
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    commands = [c for b in blocks((work / "README.md").read_text()) if b.skip is None for c in b.commands]
    logs = tmp_path / "logs"
    logs.mkdir()
    ran = subprocess.run(
        ["bash", "-c", script(commands, logs)], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    if ran.returncode != 0:
        pytest.fail(ran.stdout[-6000:] + ran.stderr[-3000:])
    assert ran.stdout.count("ok README.md:") == len(commands)
