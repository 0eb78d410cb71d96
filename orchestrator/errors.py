"""Exceptions of the orchestrator.

One tree, so that the CLI can turn any of them into one line for the user::

    DdcError                    base; ``hint`` says how to fix it
     +-- SpecError              a testbed or campaign file is wrong (names the key path)
     +-- CommandError           an external command failed (argv, exit code, output tail)
     +-- ImageError             a guest image cannot be built
     +-- HypervisorError        libvirt is unreachable or refused a domain
     +-- StateError             the testbed state says no (already up, locked, unknown)
     +-- GuestError             a blade did not answer, or a remote command failed
"""

from __future__ import annotations


class DdcError(Exception):
    """Base of every error the orchestrator raises on purpose."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message


class SpecError(DdcError):
    """A testbed or campaign file is malformed or impossible."""


class CommandError(DdcError):
    """An external command exited non-zero; carries argv and the tail of its output."""

    def __init__(self, argv: list[str], returncode: int, stdout: str = "", stderr: str = "",
                 hint: str | None = None) -> None:
        import shlex

        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        tail = "\n".join((stderr or stdout).strip().splitlines()[-10:])
        message = f"command failed with exit code {returncode}: {shlex.join(argv)}"
        if tail:
            message += "\n" + tail
        super().__init__(message, hint)


class ImageError(DdcError):
    """A guest image recipe is wrong or its build failed."""


class HypervisorError(DdcError):
    """libvirt is unreachable, or it refused or lost a domain."""


class StateError(DdcError):
    """The testbed's state forbids the operation (already up, locked by another ddc)."""


class GuestError(DdcError):
    """A blade did not become reachable, or a command inside it failed."""
