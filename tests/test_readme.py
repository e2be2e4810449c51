"""README.md's Python examples run as tests, so the README cannot drift from the code.

Every fenced ``python`` block runs in a fresh namespace with its output captured, compiled
under README.md's own line numbers (a traceback points into the README). Where a ``print``
statement ends with a comment that reads like a value, ``print(x)  # 4 ('b0',)``, the printed
line must be that comment, or begin it with only prose after it (``# 2 blocks stored ...``,
``# ['b1']: b0 is pinned``); other comments are prose and are not compared.

A block that calls ``from_pretrained`` loads SmolLM2 (mark ``smollm2``); a block that builds
an ``OpenAI`` client or names a loopback URL gets a real ``prefixkv serve`` on SmolLM2,
started here on a free port, with the README's ``http://127.0.0.1:8000`` replaced by the
server's (marks ``process`` and ``smollm2``).
Nothing is skipped: a block that cannot run (a missing package or model) fails its test.
"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\s`]*)")
PYTHON_INFO = {"python", "py", "python3"}
LOCAL_SERVER = re.compile(r"http://(?:127\.0\.0\.1|localhost):\d+")
# A comment that starts like a Python value (a number, a container, a string, a constant)
# states the expected output; one that starts with a word is prose.
VALUE_COMMENT = re.compile(r"^(?:[-+]?\d|[\[({'\"]|(?:True|False|None)\b)")
# After the expected output, only prose may follow: a separator, or a space and a word.
PROSE_TAIL = re.compile(r"^(?:[:;,](?:\s|$)|\s+[A-Za-z])")


@dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first line of code (1-based)
    source: str

    @property
    def needs_server(self) -> bool:
        return "OpenAI(" in self.source or LOCAL_SERVER.search(self.source) is not None

    @property
    def needs_smollm2(self) -> bool:
        return self.needs_server or "from_pretrained(" in self.source


def python_blocks(text: str) -> list[Block]:
    """The fenced blocks tagged python (``` or ~~~, closed by the same character at least as
    many times, an unclosed one running to the end of the document, as in CommonMark; any
    indent, for fences inside list items, removed from the block's lines)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = i + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if opening["info"].lower() in PYTHON_INFO:
            body = [
                line[indent:] if not line[:indent].strip() else line for line in lines[i + 1 : end]
            ]
            blocks.append(Block(i + 2, "\n".join(body) + "\n"))
        i = end + 1
    return blocks


def _params() -> list[Any]:
    params = []
    for block in python_blocks(README.read_text(encoding="utf-8")):
        marks = [pytest.mark.smollm2] if block.needs_smollm2 else []
        if block.needs_server:
            marks.append(pytest.mark.process)
        params.append(pytest.param(block, marks=marks, id=f"README.md:{block.line}"))
    return params


# --- running a block and checking what it printed ---------------------------------------------


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on it (tokenize: a '#' in a string is no comment)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string[1:].strip() for t in tokens if t.type == tokenize.COMMENT}


def _print_statements(tree: ast.AST) -> dict[int, int]:
    """For each line of a ``print(...)`` statement: the statement's last line."""
    lines = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "print"
            and node.end_lineno is not None
        ):
            for line in range(node.lineno, node.end_lineno + 1):
                lines[line] = node.end_lineno
    return lines


def expected_output_mismatch(printed: str, comment: str) -> str | None:
    """Why ``printed`` does not fit the value comment, or None if it does."""
    if comment == printed:
        return None
    if comment.startswith(printed) and PROSE_TAIL.match(comment[len(printed) :]):
        return None
    return f"printed {printed!r}, the README says # {comment}"


def run_block(block: Block, replacements: dict[str, str] | None = None) -> list[str]:
    """Run ``block`` in a fresh namespace; return its printed lines. Raises AssertionError
    if a print statement with a value comment printed something else, or never ran."""
    source = block.source
    for old, new in (replacements or {}).items():
        source = source.replace(old, new)
    padded = "\n" * (block.line - 1) + source  # README line numbers in tracebacks
    filename = str(README)
    tree = ast.parse(padded, filename)
    comments = _comments(padded)
    statement_end = _print_statements(tree)
    expected = {
        end: comments[end]
        for end in set(statement_end.values())
        if VALUE_COMMENT.match(comments.get(end, ""))
    }
    printed: list[tuple[int, str]] = []
    stdout = io.StringIO()

    def recording_print(*args: Any, **kwargs: Any) -> None:
        if kwargs.get("file") not in (None, sys.stdout):
            print(*args, **kwargs)
            return
        text = io.StringIO()
        print(*args, **{**kwargs, "file": text})
        caller = sys._getframe(1)
        if caller.f_code.co_filename == filename:
            printed.append((caller.f_lineno, text.getvalue()))
        stdout.write(text.getvalue())

    namespace: dict[str, Any] = {"__name__": "__readme__", "print": recording_print}
    try:
        with contextlib.redirect_stdout(stdout):
            exec(compile(tree, filename, "exec"), namespace)
    finally:  # a script may leave its HTTP clients open; a test closes them (ResourceWarning)
        for value in namespace.values():
            if type(value).__module__.split(".")[0] in ("openai", "httpx"):
                getattr(value, "close", lambda: None)()
    problems, compared = [], set()
    for line, text in printed:
        end = statement_end.get(line)
        if end in expected:
            compared.add(end)
            why = expected_output_mismatch(text.rstrip("\n"), expected[end])
            if why:
                problems.append(f"README.md:{end}: {why}")
    problems += [f"README.md:{end}: never printed" for end in sorted(set(expected) - compared)]
    assert not problems, "\n".join(problems) + "\n--- output ---\n" + stdout.getvalue()
    return stdout.getvalue().splitlines()


# --- the tests --------------------------------------------------------------------------------


def test_the_readme_has_python_examples() -> None:
    """An empty parameter list below would run nothing: make that a failure."""
    assert len(python_blocks(README.read_text(encoding="utf-8"))) >= 3


@pytest.mark.parametrize("block", _params())
def test_readme_example(block: Block, tmp_path: Path) -> None:
    if not block.needs_server:
        run_block(block)
        return
    from .server.harness import ServerProcess

    urls = set(LOCAL_SERVER.findall(block.source))
    assert urls, "the example builds an OpenAI client but names no local server to redirect"
    server = ServerProcess([], tmp_path / "server.log")  # the defaults: SmolLM2, block size 16
    try:
        server.wait_ready(timeout=300)
        output = run_block(block, dict.fromkeys(urls, server.url))
        assert output, "the example printed nothing"
        assert server.stats()["queries"] > 0, "the example never reached the server"
    finally:
        status = server.stop()
    assert status == 0, server.output()
    assert "Traceback" not in server.output(), server.output()


# --- the checker itself (it must be able to fail) ---------------------------------------------


def test_extraction_finds_fences_of_every_kind() -> None:
    text = "\n".join(
        [
            "# Title",
            "```python",
            "a = 1",
            "```",
            "```sh",
            "echo no",
            "```",
            "  ~~~~ py title",
            "  b = 2",
            "  ```",
            "  still b",
            "  ~~~~",
            "```pycon",
            ">>> no",
            "```",
            "- a list item:",
            "",
            "    ```python",
            "    if d:",
            "        d = 4",
            "    ```",
            "````Python",
            "c = 3",
        ]
    )
    blocks = python_blocks(text)
    assert [(b.line, b.source) for b in blocks] == [
        (3, "a = 1\n"),
        (9, "b = 2\n```\nstill b\n"),
        (19, "if d:\n    d = 4\n"),
        (23, "c = 3\n"),
    ]


@pytest.mark.parametrize(
    ("printed", "comment", "ok"),
    [
        ("4 ('b0',)", "4 ('b0',)", True),
        ("['b1']", "['b1']: b0 is pinned", True),
        ("2", "2 blocks stored (32 tokens); 8 left over", True),
        ("4", "4 ('b0',)", False),  # a value after the output is not prose
        ("5 ('b0',)", "4 ('b0',)", False),
        ("['b1', 'b0']", "['b1']: b0 is pinned", False),
        ("24", "2 blocks stored", False),
        ("2", "23", False),
    ],
)
def test_expected_output_comparison(printed: str, comment: str, ok: bool) -> None:
    assert (expected_output_mismatch(printed, comment) is None) is ok


def test_a_wrong_expected_comment_fails_and_prose_is_ignored() -> None:
    good = Block(1, "x = [1]\nprint(len(x),\n      x)  # 1 [1]\nprint('hi')  # the greeting\n")
    assert run_block(good) == ["1 [1]", "hi"]
    with pytest.raises(AssertionError, match=r"README.md:1: printed '2', the README says # 3"):
        run_block(Block(1, "print(1 + 1)  # 3\n"))
    with pytest.raises(AssertionError, match=r"README.md:2: never printed"):
        run_block(Block(1, "if False:\n    print(1)  # 1\n"))


def test_a_failing_block_points_at_its_readme_line() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        run_block(Block(40, "x = 1\ny = x / 0\n"))
    assert info.traceback[-1].lineno + 1 == 41 and Path(info.traceback[-1].path) == README
