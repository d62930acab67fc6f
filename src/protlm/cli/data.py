"""``protlm inspect / prepare / prepare-merge / datasets`` — FASTA files, pretraining shards and the
benchmark data sets (:mod:`protlm.data`).

Argument parsing and printed summaries only; heavy imports happen inside the command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protlm.cli.common import add_out, data_parent, emit, json_parent, progress_bar
from protlm.errors import ProtlmError


def _add_cleaning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cleaning (see docs/data.md)")
    g.add_argument("--rare", choices=["X", "keep"], default="X",
                   help="B/O/U/Z: map to X (default, as ProtTrans/ESM) or keep")
    g.add_argument("--skip-invalid", action="store_true",
                   help="skip (log and count) records with invalid characters or no residues "
                        "instead of stopping")
    g.add_argument("--rename-duplicates", action="store_true",
                   help="rename repeated ids to ID_2, ID_3, ... instead of stopping")


def _check_out_given(out, name: str) -> None:
    """An empty folder argument ("$OUT" of an unset variable) would be the current folder (an empty
    --out is refused for every command by protlm.cli.main)."""
    if out is not None and not str(out).strip():
        from protlm.errors import ConfigError

        raise ConfigError(f"{name} is empty; give the prepared folder")


def cmd_inspect(args) -> int:
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.stats import fasta_statistics

    res = fasta_statistics(args.fasta, CleaningPolicy(args.rare), skip_invalid=args.skip_invalid,
                           rename_duplicates=args.rename_duplicates)
    ln = res["length"]
    summary = (
        f"{res['file']}: {res['records']:,} records, {res['residues']:,} residues; "
        f"length min {ln['min']}, median {ln['median']:g}, mean {ln['mean']}, max {ln['max']} "
        f"({ln['longest_id']}); skipped {res['skipped_invalid']}, renamed {res['renamed_duplicates']}"
    )
    emit(args, res, summary)
    return 0


def cmd_prepare(args) -> int:
    from protlm.data.prepare import PrepareOptions, prepare, verify
    from protlm.errors import ConfigError

    if args.verify:
        if args.input:
            raise ConfigError("--verify checks the folder given by --out; give no input file")
        res = verify(args.out)
        emit(args, res, f"{args.out}: {res['shards']} shard files, {res['records']:,} records: "
                         "sizes and content hashes match the manifest")
        return 0
    if not args.input:
        raise ConfigError("give the FASTA input file (or --verify to check a prepared --out folder)")

    options = PrepareOptions(
        valid_fraction=args.valid_fraction,
        split_salt=args.split_salt,
        min_length=args.min_length,
        max_length=args.max_length,
        rare=args.rare,
        skip_invalid=args.skip_invalid,
        chunk_mb=args.chunk_mb,
    )
    size = Path(args.input).stat().st_size if Path(args.input).is_file() else None
    bar = progress_bar(size, "prepare")
    try:
        result = prepare(
            args.input, args.out, options, exclude=args.exclude or (), workers=args.workers,
            shard=args.shard, dedup=args.dedup, rename_duplicates=args.rename_duplicates,
            progress=bar.update,
        )
    finally:
        bar.close()
    if "splits" in result:
        c = result["counts"]
        summary = (
            # records_read counts the records that parsed; --skip-invalid's skipped ones are in the file too
            f"prepared {c['kept']:,} of {c['records_read'] + c['skipped_invalid']:,} records "
            f"(train {result['splits']['train']['records']:,} / valid "
            f"{result['splits']['valid']['records']:,}; excluded {c['excluded']}, too short "
            f"{c['too_short']}, too long {c['too_long']}, skipped {c['skipped_invalid']}, "
            f"duplicate sequences {c['duplicate_sequences']:,}, removed {c['duplicates_removed']:,}) "
            f"→ {Path(args.out) / 'manifest.json'}"
        )
    else:
        i, n = result["shard"]
        summary = (
            f"part {i}/{n} done: {len(result['chunks'])} of {result['total_chunks']} chunks "
            f"({result['chunks_reused']} reused); run `protlm prepare-merge {args.out}` "
            "when all parts are done"
        )
    emit(args, result, summary)
    return 0


def cmd_prepare_merge(args) -> int:
    from protlm.data.prepare import merge

    _check_out_given(args.out, "the folder argument")
    result = merge(args.out, dedup=args.dedup, rename_duplicates=args.rename_duplicates)
    c = result["counts"]
    summary = (
        f"merged {result['chunks']} chunks: {c['kept']:,} records "
        f"→ {Path(args.out) / 'manifest.json'}"
    )
    emit(args, result, summary)
    return 0


def cmd_datasets(args) -> int:
    from protlm.data.benchmarks import BENCHMARKS, load_benchmark, summarize
    from protlm.errors import ConfigError

    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ConfigError(f"unknown data set {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    from protlm.io.resources import data_root

    data = data_root(args.data)
    if not data.is_dir():
        raise ProtlmError(f"{data}: no such folder (--data should point at the protlm benchmark data)")
    result = {name: summarize(load_benchmark(name, data)) for name in names}
    lines = [f"{name:24s} {res.get('records', 0):>7,} records  {res.get('splits', {})}"
             for name, res in result.items()]
    emit(args, result, "\n".join(lines))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    J = json_parent()
    p = subparsers.add_parser("inspect", help="validate a FASTA file and print its statistics", parents=[J],
                              description="Read a FASTA(.gz) file with protlm's cleaning policy and "
                                          "report counts, lengths and composition.")
    p.add_argument("fasta", help="FASTA or gzipped FASTA file")
    _add_cleaning(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("prepare", help="FASTA(.gz) → tokenised pretraining shards", parents=[J],
                              description="Clean, split (by id hash), filter and tokenise a FASTA file "
                                          "into uint8 token shards with a manifest.json. Resumable: "
                                          "finished chunks are skipped when rerun.")
    p.add_argument("input", nargs="?", help="FASTA or gzipped FASTA file")
    add_out(p, required=True, help="output folder")
    p.add_argument("--verify", action="store_true",
                   help="check the prepared --out folder (file sizes and content hashes against manifest.json) "
                        "instead of preparing")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--shard", metavar="i/N",
                   help="process only chunks with index %% N == i (then run prepare-merge)")
    p.add_argument("--valid-fraction", type=float, default=0.01,
                   help="fraction of ids (by hash) in the validation split (default 0.01)")
    p.add_argument("--split-salt", default="protlm", help="salt of the id hash (default protlm)")
    p.add_argument("--min-length", type=int, default=1, help="drop shorter sequences")
    p.add_argument("--max-length", type=int, default=None,
                   help="drop longer sequences (default: keep all; trainers crop)")
    p.add_argument("--exclude", action="append", metavar="FILE",
                   help="ids or sequences to remove before the split (FASTA, or one per line); "
                        "repeatable")
    p.add_argument("--dedup", action="store_true",
                   help="remove exact duplicate sequences (the first occurrence is kept)")
    p.add_argument("--chunk-mb", type=float, default=32.0,
                   help="MB of FASTA text per output chunk (default 32)")
    _add_cleaning(p)
    p.set_defaults(func=cmd_prepare)

    p = subparsers.add_parser("prepare-merge", help="join the parts of a sharded prepare run", parents=[J],
                              description="After `protlm prepare ... --shard i/N` for every i, check "
                                          "that all chunks are done and write manifest.json.")
    p.add_argument("out", help="the --out folder the parts wrote into")
    p.add_argument("--dedup", action="store_true", help="remove exact duplicate sequences")
    p.add_argument("--rename-duplicates", action="store_true", help="rename repeated ids")
    p.set_defaults(func=cmd_prepare_merge)

    p = subparsers.add_parser("datasets", help="load and summarise the benchmark data sets",
                              parents=[J, data_parent()],
                              description="Load benchmark sets from the protlm data folder and print "
                                          "their counts, splits and label distributions.")
    p.add_argument("names", nargs="*", help="data sets (default: all)")
    p.set_defaults(func=cmd_datasets)
