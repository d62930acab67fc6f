"""Errors a user can cause.

Every exception here carries one readable line. The CLI prints it (``protlm: error: ...``)
and exits non-zero, without a traceback; library users can catch :class:`ProtlmError`.
"""

from __future__ import annotations


class ProtlmError(Exception):
    """Base class for errors caused by user input (files, options, configs)."""

    exit_code = 2


class InputError(ProtlmError):
    """A file or path given by the user is missing, unreadable or malformed."""


class FastaError(InputError):
    """Malformed FASTA input; the message names the file, line and record."""


class ConfigError(ProtlmError):
    """A configuration value or command-line option is invalid."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the command is, like Ctrl-C: locks are
    released, temporary files and folders removed, finished parts kept; the CLI exits 143 (130 for
    Ctrl-C)."""

