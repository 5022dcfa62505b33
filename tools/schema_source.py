"""What the generators in tools/ share: reading a checkout of apple/device-management and writing the
module they generate from it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def commit_of(schema_dir: Path) -> str:
    """The checkout's commit, named in the generated file's header."""
    try:
        done = subprocess.run(["git", "-C", str(schema_dir), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return done.stdout.strip()


def main(argv: list[str] | None, description: str, out: Path, generate: Callable[[Path, str], str],
         summary: str = "") -> int:
    """`tools/gen_X.py SCHEMA_DIR [--commit C] [--out FILE]`: write generate(SCHEMA_DIR, commit) to FILE."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("schema_dir", type=Path, help="a checkout of apple/device-management")
    parser.add_argument("--commit", help="the schema's commit, when schema_dir is not a git checkout")
    parser.add_argument("--out", type=Path, default=out, help=f"default: {out}")
    args = parser.parse_args(argv)
    text = generate(args.schema_dir, args.commit or commit_of(args.schema_dir))
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}{summary}", file=sys.stderr)
    return 0
