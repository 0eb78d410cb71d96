"""The one way the orchestrator runs host commands.

argv lists only (never a shell), each command logged as ``+ shlex.join(argv)``,
and a child that outlives an exception in the caller is terminated.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import CommandError

LOG = logging.getLogger(__name__)


def run(argv: Sequence[str | Path], *, check: bool = True, capture: bool = True,
        input: str | bytes | None = None, env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None, timeout: float | None = None,
        hint: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return its result; raise CommandError if it fails.

    Output is captured as text unless ``capture`` is false, in which case it goes
    to our own stdout/stderr (for long builds the user wants to watch).
    """
    args = [str(a) for a in argv]
    LOG.debug("+ %s", shlex.join(args))
    text_input = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            args, input=text_input, env=None if env is None else dict(env), cwd=cwd,
            timeout=timeout, text=True,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as exc:
        raise CommandError(args, 127, stderr=str(exc),
                           hint=hint or f"install the program {args[0]!r}") from exc
    except subprocess.TimeoutExpired as exc:
        # subprocess.run() has already killed the child.
        raise CommandError(args, -9, stderr=f"timed out after {timeout} s", hint=hint) from exc
    if check and proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout or "", proc.stderr or "", hint=hint)
    return proc
