"""Generated blocks inside hand-written Markdown pages, so the tables that mirror the code cannot drift.

A block is delimited by ``<!-- begin generated: NAME -->`` and ``<!-- end generated: NAME -->``; the prose around
it is kept as written. :func:`replace_blocks` rewrites the blocks of a page, :func:`stale_blocks` names those that
differ from what the code generates now (tests call it), :func:`markdown_table` renders a table.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from node.errors import ConfigError

_BLOCK = re.compile(
    r"(?P<begin><!-- begin generated: (?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- end generated: (?P=name) -->)",
    re.DOTALL,
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table (``|`` in cells escaped)."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)]) + "\n"


def read_blocks(text: str) -> dict[str, str]:
    """The body of every generated block of ``text``, by name."""
    return {m["name"]: m["body"] for m in _BLOCK.finditer(text)}


def replace_blocks(text: str, blocks: Mapping[str, str], where: str = "the page") -> str:
    """``text`` with each block's body replaced by ``blocks[name]``; every block must exist exactly once."""
    found = [m["name"] for m in _BLOCK.finditer(text)]
    missing = sorted(set(blocks) - set(found))
    if missing or len(found) != len(set(found)):
        raise ConfigError(f"{where}: generated block(s) missing or repeated: {', '.join(missing) or found}")
    return _BLOCK.sub(lambda m: m["begin"] + blocks.get(m["name"], m["body"]) + m["end"], text)


def stale_blocks(path: Path, blocks: Mapping[str, str]) -> list[str]:
    """Names of the blocks whose text in ``path`` differs from ``blocks`` (missing blocks count as stale)."""
    current = read_blocks(path.read_text(encoding="utf-8"))
    return [name for name, body in blocks.items() if current.get(name) != body]


def write_blocks(path: Path, blocks: Mapping[str, str]) -> bool:
    """Rewrite the generated blocks of ``path``; returns whether the file changed."""
    text = path.read_text(encoding="utf-8")
    new = replace_blocks(text, blocks, str(path))
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def generator_main(prog: str, page: Path, blocks: Callable[[], Mapping[str, str]],
                   argv: Sequence[str] | None = None) -> int:
    """The command line of a page generator: ``--write`` rewrites ``page``'s blocks, ``--check`` exits 1 when one
    is stale, neither prints them."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}",
                                     description=f"Regenerate or check the tables of docs/{page.name}.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite the generated blocks of the page")
    group.add_argument("--check", action="store_true", help="exit 1 when a generated block is stale")
    parser.add_argument("--doc", type=Path, default=page, help=f"the page (default docs/{page.name})")
    args = parser.parse_args(argv)
    generated = blocks()
    if args.write:
        changed = write_blocks(args.doc, generated)
        print(f"{args.doc}: {'updated' if changed else 'up to date'}")
        return 0
    if args.check:
        stale = stale_blocks(args.doc, generated)
        if stale:
            print(f"{args.doc}: stale generated block(s): {', '.join(stale)}; run python -m {prog} --write",
                  file=sys.stderr)
            return 1
        return 0
    for name, body in generated.items():
        print(f"<!-- {name} -->\n{body}")
    return 0
