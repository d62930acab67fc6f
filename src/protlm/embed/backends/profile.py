"""Evolutionary information as an embedder: ``profile:DB.fasta`` → MMseqs2 profile features per residue.

``--model profile:PATH[,key=value…]`` searches every protein against the FASTA at PATH with
MMseqs2 and returns its profile (:mod:`protlm.align.mmseqs`: 20 PSSM columns, 20 frequency
columns, gap, information and depth; D = 43), exactly one row per residue. Options after the
path, comma-separated:

| key | meaning | default |
|---|---|---|
| ``iterations`` (``it``) | ``--num-iterations`` of ``mmseqs search`` | 2 |
| ``s`` (``sensitivity``) | ``-s`` | 5.7 |
| ``e`` (``evalue``) | ``-e`` and ``--e-profile`` | 1e-3 |
| ``max_seqs`` | ``--max-seqs`` | 300 |
| ``threads`` | ``--threads`` of every step | all CPU cores |
| ``chunk`` | proteins per search (a resume point) | 1000 |
| ``index`` | ``createindex`` the database: ``yes``/``no``/``auto`` (≥ 20,000 sequences) | auto |
| ``cache`` | folder for the database, its index and finished searches | ``$PROTLM_MMSEQS_CACHE`` or ``~/.cache/protlm/mmseqs`` |

e.g. ``profile:uniref50.fasta.gz,s=7.5,iterations=3``. The fingerprint holds the database's
SHA-256 (and ``upper-cased`` where its lower-case residues are upper-cased for the search), the
search parameters, the MMseqs2 version and the feature version, so caches never mix profiles of
different searches; ``threads``, ``chunk`` and ``cache`` do not change the numbers and are not in
it.

``max_residues`` is MMseqs2's longest sequence (65,535): the runner searches a longer protein in
overlapping windows (``--long-policy window``, the default) or refuses it up front, by name
(``--long-policy error``), and its batch-mates are searched either way.
"""

from __future__ import annotations

import os

import numpy as np

from protlm.align import mmseqs
from protlm.align.mmseqs import (COLUMNS, DIM, FEATURES_VERSION, ProfileBuilder, SearchParams, TargetDatabase,
                                 find_binary)
from protlm.embed.backend import Backend
from protlm.embed.backends.baselines import refuse_lm_options
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import ConfigError, InputError, model_label

_KEYS = {"iterations": "iterations", "it": "iterations", "s": "sensitivity", "sensitivity": "sensitivity",
         "e": "evalue", "evalue": "evalue", "max_seqs": "max_seqs", "threads": "threads", "chunk": "chunk",
         "index": "index", "cache": "cache"}


def parse_source(source: str) -> tuple[str, dict]:
    """``PATH[,key=value…]`` → (path, {option: value}); every key and value is checked."""
    path, *pairs = source.split(",")
    if not path:
        raise ConfigError(f"{model_label()} profile:PATH: give the database FASTA after 'profile:' "
                          "(e.g. profile:uniref50.fasta.gz)")
    opts: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or key not in _KEYS:
            raise ConfigError(f"{model_label()} profile:{source}: unknown option {pair!r}; expected key=value with key "
                              f"one of {sorted(set(_KEYS))}")
        name = _KEYS[key]
        try:
            if name in ("iterations", "max_seqs", "threads", "chunk"):
                opts[name] = int(value)
            elif name in ("sensitivity", "evalue"):
                opts[name] = float(value)
            elif name == "index":
                opts[name] = {"yes": True, "true": True, "no": False, "false": False, "auto": None}[value.lower()]
            else:
                opts[name] = value
        except (ValueError, KeyError):
            raise ConfigError(f"{model_label()} profile:{source}: bad value {value!r} for {key}") from None
    if opts.get("threads", 1) < 1 or opts.get("chunk", 1) < 1:
        raise ConfigError(f"{model_label()} profile:{source}: threads and chunk must be >= 1")
    return path, opts


class ProfileBackend(Backend):
    """MMseqs2 profiles (see the module docstring); always on the CPU, many proteins per call."""

    family = "profile"
    model_type = "protlm_mmseqs_profile"
    # MMseqs2 is fastest on many queries per search: the runner should hand over big batches.
    default_tokens_per_batch = 50_000_000
    default_max_sequences = 100_000
    default_alone_above = 10_000_000  # a search costs per query, not per padded residue: keep long ones batched

    def __init__(self, source: str, *, threads: int | None = None, chunk: int = 1000, index: bool | None = None,
                 cache: str | None = None, **search):
        self.params = SearchParams(**search).validate()
        find_binary()  # a missing binary is reported before anything else
        self.threads = threads or os.cpu_count() or 1
        self.db = TargetDatabase(source, cache_dir=cache, threads=self.threads, index=index)
        self.builder = ProfileBuilder(self.db, self.params, threads=self.threads, chunk=chunk)
        self.source = f"profile:{source}"
        self.dim = DIM
        # MMseqs2's --max-seq-len: the runner windows longer proteins (or refuses them, by name)
        self.max_residues = mmseqs.MAX_RESIDUES

    def forward(self, seqs: list[str], *, cpu: bool = False) -> list[np.ndarray]:
        return self.builder.features(seqs)

    def describe(self) -> dict:
        return {**super().describe(), "database": str(self.db.fasta), "database_sha256": self.db.sha256,
                "database_uppercased": self.db.uppercased,
                "iterations": self.params.iterations, "sensitivity": self.params.sensitivity,
                "evalue": self.params.evalue, "max_seqs": self.params.max_seqs,
                "mmseqs_version": self.builder.version, "columns": ",".join(COLUMNS),
                "features_version": FEATURES_VERSION}

    def fingerprint(self) -> str:
        return f"profile:{self.builder.fingerprint()}"


@register(prefix="profile:", help="MMseqs2 profile of each protein against a FASTA database: "
                                  "profile:DB.fasta[,s=5.7,iterations=2,e=1e-3,threads=N] (D = 43)")
def _profile(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(f"profile:{source}", options)
    path, opts = parse_source(source)
    if not os.path.isfile(path):
        raise InputError(f"{model_label()} profile:{source}: database FASTA {path!r} not found")
    return ProfileBackend(path, **opts)
