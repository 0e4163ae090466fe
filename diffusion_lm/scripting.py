"""key=value arguments for the scripts in scripts/, with the CLI's error contract.

Bad input ends in one line on stderr and exit code 2, as the diffusion-lm
commands do, so a wrapper script can tell a typo from a crash.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


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


def number(args: dict[str, str], key: str, kind: type = int, minimum: float | None = None):
    """args[key] as an int (or float); not a number, or below `minimum`, fails in one line."""
    try:
        value = kind(args[key])
    except ValueError:
        fail(f"{key} must be {'an integer' if kind is int else 'a number'}, got {args[key]!r}")
    if minimum is not None and value < minimum:
        fail(f"{key} must be at least {minimum}, got {value}")
    return value


def run_script(main: Callable[[list[str]], None]) -> None:
    """Call main(sys.argv[1:]); errors caused by input (a UserError such as a missing checkpoint, a bad
    config override) fail in one line, as `diffusion-lm` reports them."""
    from .config import user_message

    try:
        main(sys.argv[1:])
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        fail(message)
