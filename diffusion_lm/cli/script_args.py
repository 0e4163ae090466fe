"""key=value arguments for the scripts in scripts/, with the CLI's error contract.

Bad input ends in one line on stderr and exit code 2, as the diffusion-lm
commands do, so a wrapper script can tell a typo from a crash.
"""
from __future__ import annotations

import sys
from typing import NoReturn


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse(argv: list[str], defaults: dict[str, str]) -> dict[str, str]:
    """Overlay `key=value` arguments on `defaults`; an unknown key or a bare word fails."""
    args = dict(defaults)
    for a in argv:
        key, eq, value = a.partition("=")
        if not eq or key not in args:
            fail(f"unknown argument {a!r}; expected key=value with key one of {', '.join(defaults)}")
        args[key] = value
    return args
