"""``protlm predict --input my.fa --out results/`` without ``--head``: the shipped predictors on a
person's FASTA file, into one folder.

What it writes (every file to a temporary name, fsynced, renamed)::

    OUT/predictions.csv      one row per protein, predictor and target
    OUT/predictions.json     every number: per-residue states with each class's probability,
                             per-protein labels with every class's probability, values
    OUT/index.html           one row per protein, linking to
    OUT/proteins/<id>.html   one self-contained page per protein (inline CSS; no script, no network)
    OUT/contacts/<id>.npz    with a contact predictor: each protein's map (``probs``: L × L float16,
                             symmetric; ``sequence``); OUT/<predictor>/ for one off the default
                             embedder (``contacts@unirep1900/``)
    OUT/.protlm-predict/     the run's manifest and one part per finished chunk (what --resume reads)

A contact predictor (``--tasks contacts``) gives one JSON row per protein: ``min_separation``,
``top`` (the top-L pairs with |i − j| ≥ min_separation) and ``long_range_top_l5`` (the top L/5
pairs with |i − j| ≥ 24), each pair ``[i, j, p]`` (1-based, highest p first), and ``map``, the
npz's path relative to OUT; a protein longer than
:data:`~protlm.predictors.predictor.MAX_CONTACT_RESIDUES` gets ``skipped`` (why) instead. Its
CSV row's ``prediction`` is the top L/5 long-range pairs as ``i-j:p;i-j:p;…`` (empty for a skipped
protein or one too short for a long-range pair); its other columns are empty. The maps are written
(atomically) while their chunk is done, one protein at a time, before the chunk's part: a finished
chunk's maps exist when ``--resume`` reads it back.

The proteins are done in chunks (at most :data:`CHUNK_PROTEINS` proteins or
:data:`CHUNK_RESIDUES` residues); for each chunk every predictor's embedder embeds the proteins
once (the predictors on one embedder share it, per-residue heads first, so per-protein heads pool
the same embeddings), the pages are written, then the chunk's part — the mark that it is done.
A predictor is one (task, embedder) (:mod:`protlm.predictors.predictor`): without ``tasks`` the
default embedder's set runs; every row of the CSV names its predictor and embedder, and the JSON
names each predictor's embedder (and its identity: weights digest, embedder fingerprint).
``--resume`` continues an interrupted run: the finished chunks are read back, not recomputed
(same input file, same predictors — checked against the manifest). Embeddings are cached by
sequence hash and embedder identity in the feature cache (``--cache``), so a repeated protein
costs only the heads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from protlm import __version__
from protlm.errors import ConfigError, InputError
from protlm.io.atomic import json_bytes, write_bytes, write_npz, write_text, write_with
from protlm.io.checksums import sha256_file
from protlm.io.outputs import check_output_dir, output_lock, safe_names
from protlm.predictors import predictor as P
from protlm.predictors import report

STATE = ".protlm-predict"
MANIFEST = "manifest.json"
CHUNK_PROTEINS = 256
CHUNK_RESIDUES = 200_000
OUTPUTS = ("predictions.csv", "predictions.json", "index.html")
CSV_FIELDS = ["id", "length", "predictor", "embedder", "target", "prediction", "probability", "mean_confidence",
              "confidence", "probabilities", "value"]



def chunks(lengths: list[int], max_proteins: int = CHUNK_PROTEINS, max_residues: int = CHUNK_RESIDUES
           ) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges of at most ``max_proteins`` proteins and ``max_residues``
    residues (a longer protein is a chunk of its own)."""
    out, start = [], 0
    while start < len(lengths):
        stop, size = start, 0
        while stop < len(lengths) and stop - start < max_proteins and (stop == start or size + lengths[stop]
                                                                        <= max_residues):
            size += lengths[stop]
            stop += 1
        out.append((start, stop))
        start = stop
    return out


def _clean(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


def csv_rows(protein: dict, cards: dict[str, dict]) -> list[dict]:
    """The CSV rows of one protein: one per predictor and target (``cards``: the predictors'
    summaries, which name their embedders)."""
    rows = []
    for pname, targets in protein["predictions"].items():
        embedder = cards[pname]["embedder"]["name"]
        for tname, row in targets.items():
            r = {"id": protein["id"], "length": protein["length"], "predictor": pname, "embedder": embedder,
                 "target": tname}
            pred = row.get("prediction")
            if report.is_contacts(row):  # the top L/5 long-range pairs (the map is the npz)
                r["prediction"] = ";".join(f"{i}-{j}:{p:.4f}" for i, j, p in row.get("long_range_top_l5") or [])
            elif isinstance(row.get("confidence"), list):  # per-residue classes
                conf = row["confidence"]
                r.update(prediction=pred, mean_confidence=round(sum(conf) / max(len(conf), 1), 4),
                         confidence=";".join(f"{c:.4f}" for c in conf))
            elif isinstance(row.get("probabilities"), dict):  # per-protein classes
                r.update(prediction=pred, probability=round(row["probability"], 4),
                         probabilities=";".join(f"{c}={p:.4f}" for c, p in row["probabilities"].items()))
            elif isinstance(row.get("values"), list):  # per-residue values
                r["value"] = ";".join("nan" if v is None else f"{v:.4f}" for v in row["values"])
            else:
                v = row.get("value")
                r["value"] = "" if v is None else v
            rows.append(r)
    return rows


def _slim(protein: dict) -> dict:
    """What the index needs of a protein (no per-residue numbers, no contact pairs)."""
    preds = {}
    for pname, targets in protein["predictions"].items():
        preds[pname] = {}
        for tname, row in targets.items():
            if isinstance(row.get("confidence"), list):
                row = {"prediction": row["prediction"], "confidence": []}
            elif report.is_contacts(row):
                row = {k: row[k] for k in ("min_separation", "map", "skipped") if k in row}
            preds[pname][tname] = row
    return {"id": protein["id"], "length": protein["length"], "predictions": preds}


def map_folders(manifest: Path) -> list[str]:
    """The contact-map folders an earlier run's manifest lists (what --overwrite removes with the rest)."""
    try:
        names = json.loads(manifest.read_text()).get("map_folders") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n and not n.startswith(".")]


def predict_folder(fasta: str | Path, out: str | Path, tasks: list[str] | None = None, *, overwrite: bool = False,
                   resume: bool = False, cache_dir=None, progress: Callable[[int, int], None] | None = None,
                   max_proteins: int = CHUNK_PROTEINS, max_residues: int = CHUNK_RESIDUES) -> dict:
    """The job of ``protlm predict`` without ``--head`` (module docstring). Every check a user's
    input can fail — the file, the task names, the output folder, every record — comes before
    any embedding."""
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.fasta import read_fasta

    t0 = time.perf_counter()
    fasta, out = Path(fasta), Path(out)
    if resume and overwrite:
        raise ConfigError("--resume continues an interrupted run, --overwrite starts again: give one")
    if not fasta.exists():
        raise InputError(f"--input {fasta}: no such file (a FASTA file is expected)")
    if fasta.is_dir():
        raise InputError(f"--input {fasta}: is a folder (a FASTA file is expected)")
    chosen: list[str] = []
    for t in tasks or P.default_names():  # without --tasks: the default (fast) set, never a slower embedder's
        name = P.resolve(t)
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise InputError("no shipped predictors in this protlm installation (protlm/predictors/heads/ is empty); "
                         "reinstall protlm, or give --head DIR")
    state = out / STATE
    if resume:
        if not (state / MANIFEST).is_file():
            raise InputError(f"--out {out}: no interrupted protlm predict run to resume ({STATE}/{MANIFEST} is "
                             f"missing)")
        if fasta.resolve().is_relative_to(out.resolve()):
            raise InputError(f"--out {out}: holds the input {fasta}; write the predictions somewhere else")
    else:
        if (state / MANIFEST).is_file() and not overwrite:
            raise InputError(f"--out {out}: holds a protlm predict run; pass --resume to continue it (finished "
                             f"proteins are kept) or --overwrite to start again")
        check_output_dir(out, overwrite=overwrite, inputs=[fasta])
        if fasta.resolve().is_relative_to(out.resolve()):
            raise InputError(f"--out {out}: holds the input {fasta}; write the predictions somewhere else")

    records = list(read_fasta(fasta, CleaningPolicy(rare="keep")))  # malformed: one line naming file and line
    ids = [r.id for r in records]
    sequences = P.clean_sequences(ids, [r.sequence for r in records])
    lengths = [len(s) for s in sequences]

    predictors = P.load_many(chosen, cache_dir=cache_dir)
    try:
        # per-residue heads first: the per-protein heads on the same embedder then pool those
        # embeddings from the cache instead of embedding again
        order = sorted(predictors, key=lambda p: not p.needs_residues)
        manifest = {"protlm_version": __version__, "input": str(fasta), "input_sha256": sha256_file(fasta),
                    "proteins": len(ids), "residues": sum(lengths),
                    "predictors": {p.name: p.identity for p in predictors},
                    "chunking": {"max_proteins": max_proteins, "max_residues": max_residues},
                    "map_folders": [p.name for p in predictors if p.pairs]}  # OUT/<name>/<id>.npz
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out, "predictions folder", beside=True):
            if resume:
                try:
                    old = json.loads((state / MANIFEST).read_text())
                    if not isinstance(old, dict):
                        raise ValueError("not a JSON object")
                except FileNotFoundError:
                    raise InputError(f"--resume: {out} holds no interrupted run ({state / MANIFEST} is missing); "
                                     f"run without --resume") from None
                except (OSError, ValueError) as exc:
                    raise InputError(f"--resume: {state / MANIFEST} is damaged ({exc}); run again with --overwrite "
                                     f"to start over") from None
                for key in ("input_sha256", "predictors", "chunking"):
                    if old.get(key) != manifest[key]:
                        what = {"input_sha256": "another input file", "predictors": "other predictors",
                                "chunking": "other chunk sizes"}[key]
                        raise InputError(f"--resume: {out} was started with {what}; run again with --overwrite "
                                         f"(or the same --input and --tasks)")
            else:
                if overwrite:
                    for name in OUTPUTS:
                        (out / name).unlink(missing_ok=True)
                    shutil.rmtree(out / "proteins", ignore_errors=True)
                    for name in map_folders(state / MANIFEST):  # the earlier run's contact maps
                        shutil.rmtree(out / name, ignore_errors=True)
                    shutil.rmtree(state, ignore_errors=True)
                (state / "parts").mkdir(parents=True, exist_ok=True)
                write_bytes(state / MANIFEST, json_bytes(manifest))
            (out / "proteins").mkdir(exist_ok=True)
            for name in manifest["map_folders"]:
                (out / name).mkdir(exist_ok=True)
            return _run(out, state, manifest, order, predictors, ids, sequences, lengths, progress, t0,
                        max_proteins, max_residues)
    finally:
        P.close_all(predictors)


def _run(out, state, manifest, order, predictors, ids, sequences, lengths, progress, t0, max_proteins,
         max_residues) -> dict:
    cards = {p.name: _card_summary(p) for p in predictors}
    pages = safe_names(ids)
    ranges = chunks(lengths, max_proteins, max_residues)
    total, done, reused = sum(lengths), 0, 0
    parts: list[Path] = []

    def map_writer(pname: str):
        def write_map(pid: str, seq: str, probs) -> dict:
            """OUT/<predictor>/<safe id>.npz (float16 probabilities, the sequence), atomically."""
            import numpy as np

            rel = f"{pname}/{pages[pid]}.npz"
            write_npz(out / rel, {"probs": probs.astype(np.float16), "sequence": np.array(seq)}, compressed=True)
            return {"map": rel}
        return write_map

    if progress:
        progress(0, total)  # the bar starts with the work, so its rate is the work's
    for k, (a, b) in enumerate(ranges):
        part = state / "parts" / f"part-{k:06d}.json"
        parts.append(part)
        if part.is_file():
            try:
                doc = json.loads(part.read_text())
                if (doc["sha256"] == _digest(doc["proteins"])
                        and [(p["id"], p["sequence"]) for p in doc["proteins"]] == list(zip(ids[a:b], sequences[a:b]))):
                    reused += b - a
                    done += sum(lengths[a:b])
                    if progress:
                        progress(done, total)
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged part is done again
        proteins = [{"id": ids[i], "length": lengths[i], "sequence": sequences[i], "predictions": {}}
                    for i in range(a, b)]
        for p in order:
            maps = map_writer(p.name) if p.pairs else None  # contact maps: written one by one
            for rec, res in zip(proteins, p.predict(ids[a:b], sequences[a:b], maps=maps)):
                rec["predictions"][p.name] = res["targets"]
        ordered = [p.name for p in predictors]  # the order the user asked for, not the embedding order
        for rec in proteins:
            rec["predictions"] = {n: rec["predictions"][n] for n in ordered}
            write_text(out / "proteins" / f"{pages[rec['id']]}.html", report.protein_page(rec, cards))
        proteins = _clean(proteins)
        # the part's own digest: a part edited or damaged on disk is predicted again, not copied into the outputs
        write_bytes(part, json.dumps({"sha256": _digest(proteins), "proteins": proteins}).encode())
        done += sum(lengths[a:b])
        if progress:
            progress(done, total)

    header = {"protlm_version": __version__, "input": manifest["input"], "input_sha256": manifest["input_sha256"],
              "predictors": cards}

    def proteins_iter():
        for part in parts:
            yield from json.loads(part.read_text())["proteins"]

    def write_json(fh):
        text = json.dumps(_clean(header), indent=2)
        fh.write(text[:-2].encode() + b',\n  "proteins": [\n')
        first = True
        for rec in proteins_iter():
            fh.write((b"" if first else b",\n") + b"    " + json.dumps(rec).encode())
            first = False
        fh.write(b"\n  ]\n}\n")

    def write_csv(fh):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for rec in proteins_iter():
            for row in csv_rows(rec, cards):
                writer.writerow(row)
            fh.write(buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
        fh.write(buf.getvalue().encode())

    write_with(out / "predictions.json", write_json)
    write_with(out / "predictions.csv", write_csv)
    slim = [_slim(rec) for rec in proteins_iter()]
    links = {pid: f"proteins/{pages[pid]}.html" for pid in ids}
    write_text(out / "index.html", report.index_page(slim, links, cards, f"protlm predictions: {manifest['input']}"))
    seconds = time.perf_counter() - t0
    return {"output": str(out), "proteins": len(ids), "residues": total, "predictors": list(cards),
            "reused_proteins": reused, "seconds": round(seconds, 2),
            "summary": f"predicted {len(ids):,} proteins ({total:,} residues) with {', '.join(cards)}"
                       + (f" ({reused:,} read back from the interrupted run)" if reused else "")
                       + f" → {out}/ (predictions.csv, predictions.json, index.html, proteins/)"}


def _digest(proteins: list) -> str:
    """SHA-256 of a part's proteins as JSON (floats read back from JSON print the same, so a part
    read from disk gives the digest it was written with)."""
    import hashlib

    return hashlib.sha256(json.dumps(proteins).encode()).hexdigest()


def _card_summary(p: P.Predictor) -> dict:
    c = p.card or {}
    ident = p.head.info.get("embedder_identity") or {}
    return {"name": p.name, "task": c.get("task", p.head.config.name), "headline": c.get("headline", ""),
            "targets": p.targets, "identity": p.identity,
            "embedder": {"name": ident.get("model"), "fingerprint": ident.get("fingerprint"),
                         "licence": (c.get("embedder") or {}).get("licence", "")}}
