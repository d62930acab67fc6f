"""``protlm embed``: FASTA in, HDF5 out; resumable, shardable, one summary at the end.

The model is anything :func:`protlm.embed.registry.load_embedder` names: an LM folder or hub id,
a baseline (``onehot``, ``blosum62``, ``kmer``) or a k-mer model folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from protlm import __version__
from protlm.data.fasta import read_fasta, read_fasta_raw
from protlm.embed.embedder import EmbedOptions, Embedder
from protlm.embed.registry import load_embedder
from protlm.embed.store import Journal, assemble, build_keys, existing_keys, merge_files
from protlm.errors import ConfigError, InputError

log = logging.getLogger("protlm.embed")

LEVELS = ("residue", "protein", "both")


def output_paths(output: Path, level: str) -> dict[str, Path]:
    if level == "both":
        return {"residue": output, "protein": output.with_name(output.stem + ".per_protein" + output.suffix)}
    return {level: output}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard {text!r}: need 0 <= i < N")
    return i, n


def embed_fasta(model: str, input_path: str | os.PathLike, output: str | os.PathLike, *,
                options: EmbedOptions | None = None, level: str = "residue", key: str = "id",
                resume: bool = False, shard: tuple[int, int] | None = None, half: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Embed every protein of a FASTA file into HDF5. ``progress(done_residues, total_residues)``."""
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {LEVELS}, not {level!r}")
    if key not in ("id", "hash"):
        raise ConfigError(f"--key must be id or hash, not {key!r}")
    options = options or EmbedOptions()
    options.validate()
    output = Path(output)
    if output.is_dir():
        raise InputError(f"--output {output}: is a folder; give a file name such as {output / 'embeddings.h5'}")
    if not output.parent.exists():
        raise InputError(f"--output {output}: the folder {output.parent} does not exist")
    outputs = output_paths(output, level)
    journal = Journal(output)
    if not resume:
        present = [str(p) for p in outputs.values() if p.exists()] + ([str(journal.folder)] if journal.exists() else [])
        if present:
            raise InputError(f"{present[0]} already exists; pass --resume to add what is missing, "
                             f"or remove it")

    records = list(read_fasta(input_path))
    if shard is not None:
        records = records[shard[0]::shard[1]]
    ids = [r.id for r in records]
    raw = {r.id: r.sequence for r in read_fasta_raw(input_path)} if key == "hash" else None
    keys, owner = build_keys(ids, key, raw)
    seq_of = {}
    for k, r in zip(keys, records):
        seq_of.setdefault(k, r.sequence)
    duplicates = len(keys) - len(seq_of)
    done = journal.done_keys()
    if resume:
        in_files = [existing_keys(p) for p in outputs.values()]
        done |= set.intersection(*in_files) if in_files else set()
    todo = [k for k in seq_of if k not in done]

    embedder = load_embedder(model, options)
    attrs = {"model": str(model), "family": embedder.family.name, "output_dtype": "float16" if half else "float32",
             "protlm_version": __version__, "key": key, "model_type": embedder.family.model_type}
    if isinstance(embedder, Embedder):  # a language model (baselines have no layers or precision)
        attrs.update(layer=options.layer, dtype="int8-dynamic" if options.int8 else options.dtype)
    total = sum(len(seq_of[k]) for k in todo)
    done_res = 0
    originals = [owner[k] for k in todo]
    key_of = dict(zip(originals, todo))
    for b_ids, arrays in embedder.iter_embed(originals, [seq_of[k] for k in todo]):
        ok = [(key_of[i], i, a) for i, a in zip(b_ids, arrays) if a is not None]
        if ok:
            residue = [a for _, _, a in ok] if level in ("residue", "both") else None
            protein = [a.mean(axis=0).astype(np.float32) for _, _, a in ok] if level in ("protein", "both") else None
            journal.write([k for k, _, _ in ok], [i for _, i, _ in ok], residue, protein)
        done_res += sum(len(seq_of[key_of[i]]) for i in b_ids)
        if progress is not None:
            progress(done_res, total)
    counts = assemble(outputs, journal, attrs, dtype="float16" if half else "float32", keep_existing=resume)
    journal.remove()
    stats = embedder.stats.as_dict()
    return {"outputs": {k: str(v) for k, v in outputs.items()}, "datasets": counts, "records": len(records),
            "already_done": len(seq_of) - len(todo), "duplicate_sequences_shared": duplicates if key == "hash" else 0,
            "model": str(model), "family": embedder.family.name, "dim": embedder.dim, **stats}


def embed_distributed(model: str, input_path, output, **kwargs) -> dict | None:
    """Under torchrun: rank r embeds shard r/world into its own file, rank 0 merges them."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world == 1:
        return embed_fasta(model, input_path, output, **kwargs)
    if kwargs.pop("shard", None) is not None:
        raise ConfigError("--shard and torchrun both split the input; use one of them")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    output = Path(output)
    part = output.with_name(f"{output.name}.rank{rank}-of-{world}.h5")
    level = kwargs.get("level", "residue")
    try:
        result = embed_fasta(model, input_path, part, shard=(rank, world), **kwargs)
        results = [None] * world
        dist.all_gather_object(results, result)
        if rank != 0:
            return None
        merged = {}
        for lvl, path in output_paths(output, level).items():
            parts = [Path(r["outputs"][lvl]) for r in results]
            merged[lvl] = merge_files(path, parts)
            for p in parts:
                p.unlink(missing_ok=True)
        total = {k: sum(r[k] for r in results) for k in ("proteins", "residues", "records", "windowed",
                                                          "oom_splits", "cpu_fallbacks", "skipped")}
        seconds = max(r["seconds"] for r in results)
        return {**results[0], **total, "datasets": merged, "world": world, "seconds": seconds,
                "residues_per_s": total["residues"] / seconds if seconds else 0.0,
                "outputs": {k: str(v) for k, v in output_paths(output, level).items()},
                "skipped_detail": [s for r in results for s in r["skipped_detail"]]}
    finally:
        dist.barrier()
        dist.destroy_process_group()
