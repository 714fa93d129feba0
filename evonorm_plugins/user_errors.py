"""One line, then the fix: how the commands report a user's mistake.

A wrong name, path, value or file is reported as ``<command>: error: <message>`` on stderr with exit
code 2, the message naming the problem and the fix; the traceback is kept only with ``--debug`` (taken
out of the arguments before the command parses them) or ``EVONORM_DEBUG=1``. Anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Type

from .graph.genome import GenomeError
from .registry import UnknownLayerError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "EVONORM_DEBUG"
USER_ERRORS: Tuple[Type[BaseException], ...] = (UnknownLayerError, GenomeError, OSError, ValueError, ImportError)


def split_debug(argv: Optional[Sequence[str]]) -> Tuple[List[str], bool]:
    """``argv`` (default ``sys.argv[1:]``) without ``--debug``, and whether tracebacks are wanted."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    return [a for a in args if a != DEBUG_FLAG], debug


def run_reporting_user_errors(prog: str, run: Callable[[List[str]], object], argv: Optional[Sequence[str]] = None,
                              also: Tuple[Type[BaseException], ...] = ()) -> int:
    """``run(args)``; 0 when it returns, 2 with one line on stderr for a user error (see the module);
    ``also``: the command's own user errors besides :data:`USER_ERRORS`."""
    args, debug = split_debug(argv)
    try:
        run(args)
    except USER_ERRORS + also as error:
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{prog}: error: {message} (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        return 2
    return 0
