"""``protlm embed``: FASTA in, HDF5 out; resumable, shardable, one summary at the end.

The model is any embedder spec (:mod:`protlm.embed.spec`): an LM folder or hub id, a baseline
(``onehot``, ``blosum62``, ``kmer``), a k-mer model folder, or any registered backend.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence


from protlm import __version__
from protlm.data.alphabet import CleaningPolicy
from protlm.data.fasta import read_fasta
from protlm.embed.pooling import mean_vector
from protlm.embed.runner import Embedder
from protlm.embed.spec import EmbedderSpec, EmbedOptions
from protlm.embed.store import (EntryCheck, Journal, assemble, build_keys, check_resumable, existing_sequences,
                                merge_files, sequence_digest)
from protlm.io.outputs import check_not_input, output_lock, probe_writable
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


#: The length at which a protein's attention costs about as much as the rest of its forward; the
#: cost model of :func:`balanced_part` (ESM-2 35M shape on a CPU: attention was ~45% of the time at
#: Swiss-Prot's lengths, docs/benchmarks.md). Only the order of costs matters, not this value exactly.
ATTENTION_EVEN_LENGTH = 512


def balanced_part(lengths: Sequence[int], part: int, parts: int) -> list[int]:
    """The record indices of ``part`` (of ``parts``) when the work is split evenly, for torchrun's
    processes: records in decreasing cost (a protein of L residues costs L·(1 + L/512), its dense
    layers plus its attention) go each to the part with the least cost so far (ties: the lower part);
    every part keeps the file's order. The same lengths and ``parts`` always give the same split, so
    ``--resume`` finds each process's proteins again. (``--shard i/N`` stays ``i, i+N, …``: jobs
    run apart can be started from that rule alone.)"""
    import heapq

    cost = [n * (1.0 + n / ATTENTION_EVEN_LENGTH) for n in lengths]
    load = [(0.0, p) for p in range(parts)]
    mine = []
    for i in sorted(range(len(cost)), key=lambda i: (-cost[i], i)):
        spent, p = heapq.heappop(load)
        if p == part:
            mine.append(i)
        heapq.heappush(load, (spent + cost[i], p))
    return sorted(mine)


def embed_fasta(model: str, input_path: str | os.PathLike, output: str | os.PathLike, *,
                options: EmbedOptions | None = None, level: str = "residue", key: str = "id",
                resume: bool = False, shard: tuple[int, int] | None = None, balanced: bool = False,
                half: bool = False, compress: bool = False,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """Embed every protein of a FASTA file into HDF5. ``progress(done_residues, total_residues)``.
    ``shard=(i, N)``: only proteins i, i+N, …; with ``balanced``, the i-th of N parts of even work
    (:func:`balanced_part`; torchrun's processes)."""
    if level not in LEVELS:
        raise ConfigError(f"--level must be one of {LEVELS}, not {level!r}")
    if key not in ("id", "hash"):
        raise ConfigError(f"--key must be id or hash, not {key!r}")
    options = options or EmbedOptions()
    options.validate()
    if options.pooling != "mean" and level != "protein":
        raise ConfigError(f"--pooling {options.pooling} gives per-protein vectors only; use --level protein")
    output = Path(output)
    outputs = output_paths(output, level)
    for path in outputs.values():
        check_not_input(path, [input_path], "--output")
    if output.is_dir():
        raise InputError(f"--output {output}: is a folder; give a file name such as {output / 'embeddings.h5'}")
    if not output.parent.exists():
        raise InputError(f"--output {output}: the folder {output.parent} does not exist")
    probe_writable(output.parent, "--output")
    journal = Journal(output)
    if not resume:
        # a journal without finished parts (a run that failed before its first batch) holds nothing
        present = [str(p) for p in outputs.values() if p.exists()] + ([str(journal.folder)] if journal.parts() else [])
        if present:
            raise InputError(f"{present[0]} already exists; pass --resume to add what is missing, "
                             f"or remove it")
    with output_lock(output, what="embedding output"):
        return _embed_locked(model, input_path, output, outputs, journal, options=options, level=level, key=key,
                             resume=resume, shard=shard, balanced=balanced, half=half, compress=compress,
                             progress=progress)


def _embed_locked(model, input_path, output: Path, outputs: dict[str, Path], journal: Journal, *, options, level,
                  key, resume, shard, balanced, half, compress, progress) -> dict:
    # B/Z/U/O are kept here: each family decides (ESM and protlm's causal LMs have tokens for them,
    # the ProtTrans families read them as X), exactly as the Python API and transformers do.
    records = list(read_fasta(input_path, CleaningPolicy(rare="keep")))
    if shard is not None and balanced:
        records = [records[i] for i in balanced_part([len(r.sequence) for r in records], *shard)]
    elif shard is not None:
        records = records[shard[0]::shard[1]]
    ids = [r.id for r in records]
    # --key hash: the one rule of protlm.embed.store.hash_key — the sequence as written (upper case,
    # gaps and a final * removed, B/Z/U/O kept), the same string the task readers hash.
    raw = {r.id: r.sequence for r in records} if key == "hash" else None
    keys, owner = build_keys(ids, key, raw)
    seq_of = {}
    for k, r in zip(keys, records):
        seq_of.setdefault(k, r.sequence)
    duplicates = len(keys) - len(seq_of)

    embedder = Embedder(EmbedderSpec(str(model), options))
    attrs = {**embedder.describe(), "output_dtype": "float16" if half else "float32",
             "protlm_version": __version__, "key": key}
    # What must not change between a run and its --resume: the numbers' source and the file layout.
    run = {"fingerprint": embedder.fingerprint(), "level": level, "key": key, "output_dtype": attrs["output_dtype"]}
    if resume:
        for lvl, path in outputs.items():
            check_resumable(path, {**run, "level": lvl})
    journal.claim(run)
    # Everything kept is checked now, before any work: shapes against the model and the input's
    # sequences, finite values; bad journal parts are redone, bad output entries refused.
    lengths = {k: len(s) for k, s in seq_of.items()}
    pooled = options.pooling != "mean"  # a backend's own per-protein vectors (e.g. UniRep's h_avg)
    checks = {lvl: EntryCheck(lvl, None if lvl == "protein" and pooled else embedder.dim, attrs["output_dtype"],
                              lengths) for lvl in outputs}
    done = journal.done_sequences(checks)
    if resume:
        in_files = [existing_sequences(p, checks[lvl]) for lvl, p in outputs.items()]
        common = set.intersection(*(set(f) for f in in_files)) if in_files else set()
        for k in common:
            done.setdefault(k, in_files[0][k])
    for k, digest in done.items():
        if k in seq_of and digest and digest != sequence_digest(seq_of[k]):
            raise InputError(f"--resume: {owner[k]!r} has another sequence than the one already embedded under "
                             f"its name in {output}; remove the old output (or use a new --output) to embed it")
    todo = [k for k in seq_of if k not in done]
    total = sum(len(seq_of[k]) for k in todo)
    done_res = 0
    originals = [owner[k] for k in todo]
    key_of = dict(zip(originals, todo))
    for b_ids, arrays in embedder.iter_embed(originals, [seq_of[k] for k in todo], pooled=pooled):
        ok = [(key_of[i], i, a) for i, a in zip(b_ids, arrays) if a is not None]
        if ok:
            residue = [a for _, _, a in ok] if level in ("residue", "both") else None
            if pooled:
                protein = [a for _, _, a in ok]
            else:
                protein = [mean_vector(a) for _, _, a in ok] if level != "residue" else None
            journal.write([k for k, _, _ in ok], [i for _, i, _ in ok], residue, protein,
                          [sequence_digest(seq_of[k]) for k, _, _ in ok])
        done_res += sum(len(seq_of[key_of[i]]) for i in b_ids)
        if progress is not None:
            progress(done_res, total)
    counts = assemble(outputs, journal, attrs, dtype="float16" if half else "float32", keep_existing=resume,
                      compress=compress)
    journal.remove()
    stats = embedder.stats.as_dict()
    return {"outputs": {k: str(v) for k, v in outputs.items()}, "datasets": counts, "records": len(records),
            "already_done": len(seq_of) - len(todo), "duplicate_sequences_shared": duplicates if key == "hash" else 0,
            "model": str(model), "family": embedder.family, "dim": embedder.dim, **stats}


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
        result = embed_fasta(model, input_path, part, shard=(rank, world), balanced=True, **kwargs)
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
