"""``python -m fer_edge`` and the ``fer-edge`` command: :func:`run`."""
from __future__ import annotations

import signal
import sys


def run(argv: list[str] | None = None) -> None:
    """The ``fer-edge`` entry point: import the command line, then run it.

    Importing it (torch, typer, the commands) takes a second or more, before any command has its own interrupt
    handling: Ctrl-C then printed a traceback from inside an import, and SIGTERM ended the process without a
    word (143). Here both end the start-up with one ``interrupted:`` line and exit status 130, as later, and
    SIGTERM stays an interrupt (``KeyboardInterrupt``) for the whole run.
    """
    def _raise(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM is an interrupt for the whole process: the long commands install their own handler of the same
    # kind while they work (and put this one back), the others end through fer_edge.cli.common.handle_errors
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        from fer_edge.cli import main

        main(argv)  # (an interrupt inside a command is that command's to report; none comes out of it)
    except KeyboardInterrupt:
        print("interrupted: fer-edge stopped while starting; nothing was done", file=sys.stderr)
        sys.exit(130)
    finally:  # the command is over: a SIGTERM during the interpreter's shutdown raised into an atexit callback
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    run()
