"""Label file formats: how a task's ``file:`` + ``format:`` becomes protein records.

Each format is one registered loader ``(path, source, per_residue) -> list[ProteinRecord]``
(:class:`protlm.data.records.ProteinRecord`: id, sequence as written, labels, split, masks).
The built-in ones wrap :mod:`protlm.data.benchmarks`' readers; a new format is one function with
:func:`register_format` (in protlm or in a plug-in package, :mod:`protlm.plugins`), and every
place that takes a format — ``format:`` in task configs, ``protlm evaluate/compare --format``,
``--extra-test NAME=FILE:FORMAT`` — accepts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from protlm.data.alphabet import CleaningPolicy
from protlm.errors import ConfigError

#: Labelled sets keep B/O/U/Z as written (the hash key of HDF5 files); encoding maps them to X.
KEEP_RARE = CleaningPolicy(rare="keep")

Loader = Callable[..., list]


@dataclass(frozen=True)
class FormatEntry:
    name: str
    loader: Loader
    help: str


_FORMATS: dict[str, FormatEntry] = {}


def register_format(name: str, *, help: str = "") -> Callable[[Loader], Loader]:
    """Decorator: ``loader(path: Path, source, per_residue: bool | None)`` reads one labelled file
    (``source``: the task config's source entry — ``label``, ``kind``, column options)."""
    def deco(loader: Loader) -> Loader:
        old = _FORMATS.get(name)
        if old is not None and (old.loader.__module__, old.loader.__qualname__) != (loader.__module__,
                                                                                     loader.__qualname__):
            raise ValueError(f"label format {name!r} is registered already (by {old.loader.__module__}."
                             f"{old.loader.__qualname__}); choose another name")
        _FORMATS[name] = FormatEntry(name, loader, help)
        return loader
    return deco


def format_names() -> list[str]:
    from protlm.plugins import load_plugins

    load_plugins()
    return list(_FORMATS)


def get_format(name: str, where: str = "format") -> FormatEntry:
    from protlm.plugins import hint

    names = format_names()
    if name not in _FORMATS:
        raise ConfigError(f"{where}: must be one of {names}, not {name!r}{hint()}")
    return _FORMATS[name]


# --------------------------------------------------------------------------- the built-in formats


@register_format("biotrainer", help="biotrainer FASTA: TARGET=… SET=… [VALIDATION=True] [MASK=…] in the headers")
def _biotrainer(path: Path, source, per_residue: bool | None = None) -> list:
    from protlm.data.benchmarks import load_biotrainer_fasta

    return load_biotrainer_fasta(path, per_residue, policy=KEEP_RARE)


@register_format("deeploc", help="DeepLoc FASTA: >ID LOCATION-M|S|U [test]")
def _deeploc(path: Path, source, per_residue: bool | None = None) -> list:
    from protlm.data.benchmarks import load_deeploc

    return load_deeploc(path, policy=KEEP_RARE, named_sets=True)  # setHARD's new_test_set


@register_format("prottrans_csv", help="ProtTrans' secondary-structure CSV (input, dssp3, dssp8, disorder, cb513_mask)")
def _prottrans_csv(path: Path, source, per_residue: bool | None = None) -> list:
    from protlm.data.benchmarks import load_prottrans_csv

    return load_prottrans_csv(path, path.stem, policy=KEEP_RARE)


@register_format("csv", help="a sequence,label table (label:, kind:, seq_column/label_column/id_column)")
def _csv(path: Path, source, per_residue: bool | None = None) -> list:
    from protlm.data.benchmarks import load_seq_label_csv

    return load_seq_label_csv(path, source.label, source.kind, policy=KEEP_RARE, seq_column=source.seq_column,
                              label_column=source.label_column, id_column=source.id_column)
