"""``protlm kmer-train``: train the ProtVec-like 3-mer baseline embedder on a FASTA corpus.

The model folder it writes is a ``--model`` for ``protlm embed`` and for tasks; the method and
its conventions are in :mod:`protlm.models.kmer` and docs/embedding.md.
"""

from __future__ import annotations

import argparse

from protlm.cli.common import add_out, json_parent
import itertools
from pathlib import Path


def cmd_kmer_train(args) -> int:
    from protlm.cli.common import emit as _emit, progress_bar as _progress_bar
    from protlm.data.fasta import read_fasta
    from protlm.io.checksums import sha256_file
    from protlm.models.kmer import KmerTraining, train_kmer
    from protlm.errors import ConfigError, InputError

    options = KmerTraining(dim=args.dim, window=args.window, min_count=args.min_count, seed=args.seed)
    options.validate()
    if args.max_sequences is not None and args.max_sequences < 1:
        raise ConfigError(f"--max-sequences must be >= 1, not {args.max_sequences}")
    fasta, out = Path(args.fasta), Path(args.out)
    if not fasta.is_file():
        raise InputError(f"{fasta}: no such file (a FASTA or gzipped FASTA corpus is expected)")
    if out.exists():  # checked before the counting, not only when saving
        raise InputError(f"--out {out}: already exists; remove it or choose another folder")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")

    # ids play no part in training: repeated ids are renamed rather than refused
    sequences = (r.sequence for r in read_fasta(fasta, rename_duplicates=True))
    if args.max_sequences is not None:
        sequences = itertools.islice(sequences, args.max_sequences)
    source = {"trained_on": fasta.name, "trained_on_sha256": sha256_file(fasta),
              "sample": f"first {args.max_sequences} sequences" if args.max_sequences else "all sequences"}
    bar = _progress_bar(args.max_sequences, "kmer-train: counting", unit="seq")
    bar.unit_divisor = 1000
    try:
        model = train_kmer(sequences, options, progress=bar.update, source=source)
    finally:
        bar.close()
    model.save(out)
    c = model.config
    result = {"out": str(out), **c}
    summary = (f"trained {c['kmers']:,} 3-mer vectors (D={c['dim']}, window ±{c['window']} 3-mers) on "
               f"{c['sequences']:,} sequences / {c['residues']:,} residues of {fasta.name} in {c['seconds']:.1f} s "
               f"(counting {c['seconds_counting']:.1f} s) → {out}")
    _emit(args, result, summary)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "kmer-train", parents=[json_parent()], help="train the 3-mer baseline embedder (ProtVec-like, PPMI + SVD)",
        description="Count 3-mer co-occurrences in a FASTA corpus (contexts: the 3-mers in the same "
                    "reading frame within --window 3-mers), weight them by PPMI with context "
                    "smoothing 0.75 and factorise with a truncated SVD. Writes a model folder "
                    "(config.json, vocab.txt, model.safetensors) usable as `protlm embed --model DIR`.")
    p.add_argument("fasta", help="FASTA or gzipped FASTA corpus")
    add_out(p, required=True, help="model folder to create (must not exist)")
    p.add_argument("--dim", type=int, default=64, help="vector size (default 64)")
    p.add_argument("--window", type=int, default=5,
                   help="context: 3-mers up to this many 3-mers away in the same reading frame (default 5)")
    p.add_argument("--min-count", type=int, default=1,
                   help="3-mers seen fewer times get no vector (the zero vector; default 1)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="use only the first N sequences of the file (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomized SVD (default 0)")
    p.set_defaults(func=cmd_kmer_train)
