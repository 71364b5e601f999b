"""Errors in what the user gave, as the command line reports them: one line, exit status 2; and
Ctrl-C, reported as one line saying what was kept, exit status 130.

Library code raises ``ValueError`` (or ``FileNotFoundError``) when an input is bad. At the command-line
boundary the calls that check inputs run inside :func:`user_input`, which turns those into
:class:`UsageError`; :func:`run_entry` prints a UsageError as ``tempo-jax: error: <message>`` on
stderr and returns 2. Anything else keeps its traceback: it is a bug, not a bad input.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
PROG = "tempo-jax"


class UsageError(ValueError):
    """Something the user gave (an option, a file, a prompt, a model path) cannot be used.
    A ValueError, so library callers can catch it as one; the command line prints it in one line."""


def one_line(message: object) -> str:
    return " ".join(str(message).split())


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Inside: a ValueError or an OSError naming a file (missing, a folder, unreadable) is the
    user's input being refused, and leaves as a UsageError with the same message."""
    try:
        yield
    except UsageError:
        raise
    except OSError as e:
        if e.filename is None:
            raise
        raise UsageError(f"{e.filename}: {e.strerror or e}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command had done and what it kept (the one line the user sees)."""


@contextlib.contextmanager
def on_interrupt(note: str | Callable[[], str]) -> Iterator[None]:
    """Inside: Ctrl-C leaves as :class:`Interrupted` whose message is ``note`` (or ``note()``,
    evaluated when the interrupt arrives, e.g. "after step 53 of 400; nothing written"). Put it
    outside the context managers that clean up, so the message is made after they ran."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(note() if callable(note) else note) from None


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Inside: Ctrl-C waits until the block ends, then arrives as KeyboardInterrupt. For writes
    that other threads finish (orbax's checkpoint threads print a traceback when the main thread
    is interrupted under them). Main thread only; elsewhere the block runs as is."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt


def quiet_libraries() -> None:
    """Silence third-party notices that are not about the user's command (transformers says
    "PyTorch was not found" although running without torch is intended). Called by entry points
    only, before transformers is imported; a TRANSFORMERS_VERBOSITY the user set is kept."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        from transformers.utils import logging as hf_logging  # imported already: set it directly

        hf_logging.set_verbosity_error()


def _close_progress_bars() -> None:
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()


def report(message: object, prog: str = PROG) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)


def run_entry(fn: Callable[[], int], prog: str = PROG) -> int:
    """Run an entry point's body: a UsageError becomes one stderr line and exit status 2."""
    quiet_libraries()
    try:
        return fn()
    except UsageError as e:
        report(e, prog)
        return EXIT_USAGE
    except KeyboardInterrupt as e:  # Ctrl-C: one line, no traceback
        note = str(e) if isinstance(e, Interrupted) and str(e) else ""
        _close_progress_bars()  # ends their lines before the message, not after it
        sep = " " if note.startswith(("after ", "during ")) else "; "
        print(f"{prog}: interrupted{sep + note if note else ''}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into e.g. ``head``, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
