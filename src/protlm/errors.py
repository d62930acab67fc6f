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
    """A configuration value or command-line option is invalid.

    ``option``: the setting the message is about, by its config name (``dtype``,
    ``tokens_per_batch``); the message is then ``"<label>: <detail>"`` where the label says it the
    way the user gave it — ``--dtype`` when the flag is on the command line (:func:`cli_flags`),
    the config field (``config embedder.dtype``, see :meth:`at`) when a file set it, else the plain
    name (library use). A YAML user is never told about a flag they did not type.
    """

    def __init__(self, message: str = "", *, option: str | None = None, path: str | None = None):
        self.detail, self.option, self.path = message, option, path
        super().__init__(message)

    def __str__(self) -> str:
        if self.option is None:
            return self.detail
        return f"{option_label(self.option, self.path)}: {self.detail}"

    def at(self, prefix: str) -> "ConfigError":
        """The same error, placed at ``prefix.<option>`` of a config (e.g. ``embedder``)."""
        if self.option is None or self.path is not None:
            return self
        return ConfigError(self.detail, option=self.option, path=f"{prefix}.{self.option}")


_CLI_FLAGS: set[str] = set()


def cli_flags(argv: list[str]) -> None:
    """The CLI's flags as typed (``--dtype`` of ``--dtype=bf16`` too): option errors name them."""
    _CLI_FLAGS.clear()
    _CLI_FLAGS.update(a.split("=", 1)[0] for a in argv if a.startswith("--"))


def typed_flags() -> frozenset[str]:
    """The flags on the command line of this run (empty outside the CLI)."""
    return frozenset(_CLI_FLAGS)


#: The options through which a user names a model, in the order they are looked for.
MODEL_FLAGS = ("--model", "--embedder")


def model_label() -> str:
    """How to name the model a message is about: the flag the user typed — ``--model`` (embed,
    contacts, project) or ``--embedder`` (train, evaluate, compare, predict, benchmark) — else
    ``embedder``, the config field (a config file, a head's own embedder, library use)."""
    for flag in MODEL_FLAGS:
        if flag in _CLI_FLAGS:
            return flag
    return "embedder"


def option_label(option: str, path: str | None = None) -> str:
    """How to name a setting in a message: its flag if typed, else its config field, else its name."""
    flag = "--" + option.replace("_", "-")
    if flag in _CLI_FLAGS:
        return flag
    if path is not None:
        return f"config {path}"
    return option


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``), raised where the command is, like Ctrl-C: locks are
    released, temporary files and folders removed, finished parts kept; the CLI exits 143 (130 for
    Ctrl-C)."""

