"""The docs cannot drift from the code: every fenced `oloraplus ...` command in README.md and docs/*.md parses with
the real argument parser (nothing is run), every relative link (and its #anchor) exists, every console example
names the commit that made it and shows no machine path, and the generated flag table is current."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from oloraplus.cli import flag_table
from oloraplus.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}
COMMIT = re.compile(r"commit\s+`?[0-9a-f]{7,40}`?")
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|root|tmp|Users|opt|var|private)/")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    lines: list[str]
    before: str  # the prose between the previous block or heading and this one


def fenced_blocks(page: Path) -> list[Block]:
    blocks, prose, open_fence = [], [], None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^(`{3,})(\S*)", line)
        if open_fence is None and fence:
            open_fence = Block(page, number, fence.group(2), [], "\n".join(prose))
            ticks = fence.group(1)
            continue
        if open_fence is not None:
            if line.startswith(ticks) and line.strip() == ticks:
                blocks.append(open_fence)
                open_fence, prose = None, []
            else:
                open_fence.lines.append(line)
            continue
        prose = [] if line.startswith("#") else prose + [line]
    assert open_fence is None, f"{page.name}:{open_fence.line}: unclosed code fence"
    return blocks


def command_lines(block: Block) -> list[str]:
    """Shell lines of a block: every line of a bash/sh/untagged block, only the `$ ` lines of console/text."""
    if block.lang not in ("", "bash", "sh", "shell", "console", "text"):
        return []
    joined, buffer = [], ""
    for line in block.lines:
        if block.lang in ("console", "text"):
            if not line.startswith("$ "):
                continue
            line = line[2:]
        buffer += line.rstrip("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(buffer)
            buffer = ""
    return joined


def oloraplus_args(line: str) -> list[str] | None:
    """The arguments after `oloraplus` (`.venv/bin/oloraplus`, `python -m oloraplus`, `torchrun ... -m oloraplus`)
    up to the first shell operator, or None when the line does not run oloraplus."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        runs_it = token.endswith("/oloraplus") or token == "oloraplus" and (
            i == 0 or tokens[i - 1] == "-m" or re.match(r"^\w+=", tokens[i - 1]))  # not `pip install oloraplus`
        if runs_it:
            rest = tokens[i + 1:]
            break
    else:
        return None
    args = []
    for token in rest:
        if token in SHELL_OPERATORS or token.startswith((">", "2>")):
            break
        if token != "...":  # "the other flags" in prose-like examples
            args.append(token)
    return args


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for block in fenced_blocks(page):
            for line in command_lines(block):
                args = oloraplus_args(line)
                if args is not None:
                    found.append((f"{page.relative_to(ROOT)}:{block.line}: {line.strip()}", args))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    """The extraction itself works: the pages show dozens of commands, of every main subcommand."""
    assert len(COMMANDS) >= 30
    used = {args[0] for _, args in COMMANDS if args}
    assert {"train", "eval", "generate", "export", "sweep", "report", "tune-ratio", "compose"} <= used


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where, args):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 (argparse has no public accessor)
    assert args, f"{where}: no subcommand"
    assert args[0] in subcommands, f"{where}: unknown subcommand {args[0]!r}"
    if "--help" in args or "-h" in args:
        return
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: the parser refuses it (exit {exc.code}): {stderr.getvalue().strip()}")


def test_a_wrong_flag_is_caught():
    """The check can fail: a flag that does not exist makes the parser refuse the command."""
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--no-such-flag", "1"])
    assert oloraplus_args(".venv/bin/oloraplus train --lr 1e-3 | tee log  # x") == ["train", "--lr", "1e-3"]
    assert oloraplus_args("torchrun --nproc_per_node 2 -m oloraplus train ... --rank 8") == ["train", "--rank", "8"]
    assert oloraplus_args("pip install 'oloraplus[quantize]'") is None


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _prose_lines(page: Path) -> list[tuple[int, str]]:
    """(line number, line) outside code fences; a fence closes only with as many backticks as opened it."""
    ticks, out = None, []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^(`{3,})", line)
        if ticks is None and fence:
            ticks = fence.group(1)
        elif ticks is not None and line.strip() == ticks:
            ticks = None
        elif ticks is None:
            out.append((number, line))
    return out


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for _, line in _prose_lines(page) if line.startswith("#")}


def _links(page: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in _prose_lines(page)
            for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    broken = []
    for number, target in _links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{page.name}:{number}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{page.name}:{number}: {target} (no heading #{anchor} in {file.name})")
    assert not broken, "\n".join(broken)


def test_link_check_can_fail(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n[ok](#top) [bad](missing.md) [anchor](p.md#nowhere)\n", encoding="utf-8")
    assert [t for _, t in _links(page)] == ["#top", "missing.md", "p.md#nowhere"]
    assert _anchors(page) == {"top"}


# Real output: a ```console block, or any block that shows a `$ ` prompt line
CONSOLE = [b for page in PAGES for b in fenced_blocks(page)
           if b.lang == "console" or any(line.startswith("$ ") for line in b.lines)]


@pytest.mark.parametrize("block", CONSOLE, ids=[f"{b.page.name}:{b.line}" for b in CONSOLE])
def test_console_examples_name_their_commit_and_no_machine_path(block):
    """Real output is marked ```console and says which command and commit made it (in its block as `$ ` lines
    or in the prose just before it); a path of the machine it ran on would mean nothing to a reader."""
    where = f"{block.page.name}:{block.line}"
    assert COMMIT.search(block.before), f"{where}: the text before this console example names no commit"
    has_command = any(line.startswith("$ ") for line in block.lines) or "oloraplus " in block.before
    assert has_command, f"{where}: neither the example nor the text before it shows the command"
    paths = [line for line in block.lines if MACHINE_PATH.search(line)]
    assert not paths, f"{where}: machine paths in a console example: {paths[:2]}"


def test_console_examples_exist():
    assert len(CONSOLE) >= 5


def test_flag_table_is_current():
    page = flag_table.PAGE.read_text(encoding="utf-8")
    assert flag_table.render(page) == page, "docs/training.md: run python -m oloraplus.cli.flag_table"


def test_flag_table_has_every_option():
    import dataclasses

    from oloraplus.config import TrainConfig, flag

    table = flag_table.table()
    for f in dataclasses.fields(TrainConfig):
        assert f"`{flag(f.name)}`" in table
