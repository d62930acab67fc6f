"""``protlm demo``: the main job on real sequences, offline.

Default input: the real bacterial proteome that ships inside the pyhmmer wheel (a dependency
of protlm, and the field's tool for the profile search the papers compare LM speed with):
``pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa``. With ``--data DIR`` the demo uses
the protlm benchmark data folder instead (the 20k Swiss-Prot sample, and a summary of every
benchmark set found there).
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from protlm.data.prepare import PrepareOptions, prepare
from protlm.data.stats import fasta_statistics
from protlm.errors import InputError

log = logging.getLogger(__name__)

PYHMMER_PROTEOME = ("pyhmmer", "tests/data/seqs/938293.PRJEB85.HG003687.faa")
SWISSPROT_20K = "pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta"


def embedded_proteome() -> Path:
    """Path of the proteome shipped in the pyhmmer wheel."""
    package, rel = PYHMMER_PROTEOME
    try:
        path = Path(str(resources.files(package).joinpath(rel)))
    except ModuleNotFoundError:
        raise InputError("pyhmmer is not installed; run `make install` (or pip install pyhmmer)") from None
    if not path.is_file():
        raise InputError(f"{path}: the pyhmmer wheel does not carry its test proteome")
    return path


def run_demo(out: str | Path, data: str | Path | None = None, workers: int = 1, progress=None) -> dict:
    out = Path(out)
    report: dict = {"out": str(out)}
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise InputError(f"{data}: no such folder (--data should point at the protlm benchmark data)")
        fasta = data / SWISSPROT_20K
        if not fasta.is_file():
            raise InputError(f"{fasta}: no such file (is --data the protlm benchmark data folder?)")
        from protlm.data.benchmarks import BENCHMARKS, load_benchmark, summarize

        summaries = {}
        for name in BENCHMARKS:
            try:
                summaries[name] = summarize(load_benchmark(name, data))
            except InputError as exc:
                log.warning("benchmark set %s not loaded: %s", name, exc)
        report["benchmarks"] = summaries
        report["source"] = "protlm benchmark data: Swiss-Prot 2014_01, random 20k sample"
    else:
        fasta = embedded_proteome()
        report["source"] = "pyhmmer's bundled proteome 938293.PRJEB85.HG003687 (real bacterial proteins)"
    report["input"] = str(fasta)
    report["statistics"] = fasta_statistics(fasta)
    manifest = prepare(
        fasta, out / "shards", PrepareOptions(valid_fraction=0.05), workers=workers, progress=progress
    )
    report["shards"] = {
        "manifest": str(out / "shards" / "manifest.json"),
        "train": {k: manifest["splits"]["train"][k] for k in ("records", "residues")},
        "valid": {k: manifest["splits"]["valid"][k] for k in ("records", "residues")},
        "distinct_sequences": manifest["counts"]["distinct_sequences"],
    }
    return report
