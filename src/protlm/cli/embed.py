"""``protlm embed / merge`` — embeddings of a FASTA file into HDF5, and joining such files
(:mod:`protlm.embed.pipeline`, :mod:`protlm.embed.store`).

Argument parsing and printed summaries only; the embedders are imported inside :func:`cmd_embed`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from protlm.cli.common import (add_out, apply_threads, emit, json_parent, overwrite_parent, progress_bar,
                               threads_parent)


def cmd_embed(args) -> int:
    apply_threads(args)
    from protlm.embed.pipeline import embed_distributed, parse_shard
    from protlm.embed.spec import EmbedOptions

    options = EmbedOptions(layer=args.layer, device=args.device, dtype=args.dtype, int8=args.int8, compile=args.compile,
                           tokens_per_batch=args.tokens_per_batch, max_sequences=args.max_sequences,
                           alone_above=args.alone_above, long_policy=args.long_policy,
                           window_overlap=args.window_overlap, cpu_fallback=not args.no_cpu_fallback,
                           pooling=args.pooling)
    bar = progress_bar(None, "embed", unit="res")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        result = embed_distributed(args.model, args.input, args.out, options=options, level=args.level,
                                   key=args.key, resume=args.resume, shard=parse_shard(args.shard),
                                   half=args.float16, compress=args.compress, progress=progress)
    finally:
        bar.close()
    if result is None:  # a torchrun rank other than 0
        return 0
    lines = [
        f"embedded {result['proteins']:,} proteins ({result['residues']:,} residues) with {result['model']} "
        f"[{result['family']}, D={result['dim']}] in {result['seconds']:.1f} s "
        f"({result['residues_per_s']:,.0f} residues/s)",
    ]
    if result["already_done"]:
        lines.append(f"  resumed: {result['already_done']:,} proteins already done (in the output or the interrupted "
                     f"run's parts)")
    if result.get("duplicate_sequences_shared"):
        lines.append(f"  identical sequences sharing one hash key: {result['duplicate_sequences_shared']:,}")
    lines.append(f"  windowed (over the model's position limit): {result['windowed']}   "
                 f"OOM splits: {result['oom_splits']}   CPU fallbacks: {result['cpu_fallbacks']}   "
                 f"skipped: {result['skipped']}")
    for s in result["skipped_detail"][:20]:
        lines.append(f"  skipped {s['id']} ({s['length']} residues): {s['reason']}")
    for level, path in result["outputs"].items():
        lines.append(f"  {level:8s} {path}  ({result['datasets'][level]:,} datasets)")
    emit(args, result, "\n".join(lines))
    return 1 if result["skipped"] else 0


def cmd_merge(args) -> int:
    from protlm.embed.store import merge_files
    from protlm.errors import InputError
    from protlm.io.outputs import check_output_file, output_lock

    for p in args.inputs:
        if Path(p).is_dir():
            raise InputError(f"{p}: is a folder, not an HDF5 file written by protlm embed")
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file (an HDF5 file written by protlm embed)")
    check_output_file(args.output, overwrite=args.overwrite, inputs=args.inputs)
    with output_lock(args.output, "the merge output"):
        n = merge_files(Path(args.output), [Path(p) for p in args.inputs])
    emit(args, {"output": args.output, "datasets": n}, f"merged {len(args.inputs)} files → {args.output} ({n:,} datasets)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    J = json_parent()
    p = subparsers.add_parser("embed", help="embed proteins with a protein LM into HDF5",
                              parents=[J, threads_parent()],
                              description="Per-residue and/or per-protein embeddings of every protein in a "
                                          "FASTA file, with any protein LM in Hugging Face format (ESM-2, "
                                          "ProtBert, ProtT5 encoder, ALBERT, XLNet, protlm's own). Output: "
                                          "HDF5, one dataset per protein keyed by id (or sequence hash). "
                                          "Resumable (--resume); under torchrun each process takes a shard.")
    p.add_argument("--model", required=True,
                   help="Hugging Face model folder or hub id, a baseline (onehot, blosum62, kmer: the committed "
                        "3-mer model) or a folder written by protlm kmer-train, or any registered family "
                        "(docs/embedding.md lists them)")
    p.add_argument("--input", required=True, help="FASTA or gzipped FASTA")
    add_out(p, required=True, help="HDF5 file to write")
    p.add_argument("--level", choices=["residue", "protein", "both"], default="residue",
                   help="per-residue (L×D), per-protein (mean over residues, D), or both "
                        "(per-protein then goes to OUT.per_protein.h5); default residue")
    p.add_argument("--layer", type=int, default=-1, help="hidden state to export: -1 last (default), 0 embeddings")
    p.add_argument("--key", choices=["id", "hash"], default="id",
                   help="dataset names: FASTA id ('/'→'_'), or biotrainer's SHA-256 sequence hash")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "auto"], default="fp32",
                   help="model precision: bf16 (GPUs; CPUs with avx512_bf16/amx_bf16), fp16 (GPUs), auto (the fastest "
                        "accurate one here)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of linear layers (CPU)")
    p.add_argument("--compile", action="store_true",
                   help="CPU, ESM family: fuse the packed forward's per-token work (layer norms, rotation, gelu, "
                        "residuals) with torch.compile; needs a C++ compiler, the first batch pays seconds of "
                        "compilation (docs/embedding.md, \"Precision\")")
    p.add_argument("--float16", action="store_true", help="store embeddings as float16 (half the disk)")
    p.add_argument("--compress", action="store_true",
                   help="gzip-compressed HDF5 datasets, as biotrainer writes them (smaller, slower to write)")
    p.add_argument("--tokens-per-batch", type=int, default=None,
                   help="tokens per batch, padding included (packed CPU batches have none; default: the model "
                        "family's, 4000 for transformers)")
    p.add_argument("--max-sequences", type=int, default=None,
                   help="proteins per batch (default: the model family's, 100 for transformers)")
    p.add_argument("--pooling", default="mean",
                   help="per-protein vector (--level protein): mean over residues (default), or a family's own "
                        "(unirep: h_avg, h_final, c_final, fusion)")
    p.add_argument("--alone-above", type=int, default=None,
                   help="proteins longer than this many residues are embedded one at a time (default: the "
                        "family's; 1000 for transformers, none for profiles and baselines)")
    p.add_argument("--long-policy", choices=["window", "error"], default="window",
                   help="proteins over a model's hard position limit: overlapping windows (default) or an error")
    p.add_argument("--window-overlap", type=int, default=128, help="residues shared by neighbouring windows")
    p.add_argument("--no-cpu-fallback", action="store_true",
                   help="skip (and count) a protein that does not fit the GPU instead of using the CPU")
    p.add_argument("--resume", action="store_true", help="keep what the output already holds; embed the rest")
    p.add_argument("--shard", metavar="i/N", help="embed only proteins i, i+N, i+2N, … (then `protlm merge`)")
    p.set_defaults(func=cmd_embed)

    p = subparsers.add_parser("merge", help="join HDF5 embedding files (e.g. the parts of --shard runs)",
                              parents=[J, overwrite_parent()],
                              description="Copy every dataset of the inputs into one HDF5 file; a key present "
                                          "in two inputs must hold identical arrays.")
    p.add_argument("output", help="the merged HDF5 file")
    p.add_argument("inputs", nargs="+", help="HDF5 files written by protlm embed")
    p.set_defaults(func=cmd_merge)
