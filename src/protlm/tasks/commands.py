"""The jobs behind ``protlm train / evaluate / predict / export-fasta`` and ``protlm contacts …``:
one function per command, so the CLI only reads its arguments, calls one of these and prints.

Each function checks its outputs before any work (an existing output needs ``overwrite``, never an
input), does the work through :mod:`protlm.tasks.train`, writes what the command writes and
returns the result document. ``protocol``: when given, a head or config of another protocol is
refused (``protlm contacts …`` takes contact heads only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from protlm.data.alphabet import CleaningPolicy
from protlm.data.fasta import read_fasta
from protlm.errors import ConfigError, InputError
from protlm.io.atomic import json_bytes, write_bytes
from protlm.io.outputs import check_apart, check_output_dir, check_output_file, output_lock
from protlm.tasks.build import build_task_config
from protlm.tasks.config import MAX_BOOTSTRAP, TaskConfig
from protlm.tasks.finetune import STATE_FOLDER, RunState, state_folder
from protlm.tasks.train import (HEAD_FILES, HEAD_JSON, HEAD_WEIGHTS, TrainedHead, other_process, evaluate, load_head,
                                 predict_file, train)

CONTACTS = "residue_pairs_to_class"


def embedder_paths(name: str) -> list[Path]:
    """The local files and folders an embedder spec reads (an LM folder, an HDF5 file, the parts of
    ``concat:A+B``, the database of ``profile:DB``); names of built-in embedders and hub ids give none."""
    import re

    pieces, todo = [], [name]
    while todo:
        piece = todo.pop()
        pieces.append(piece)
        bare = re.sub(r"^[a-z][a-z0-9-]*:", "", piece)  # concat:, profile:, random-init:
        if bare != piece:
            todo.extend(bare.split("+") if piece.startswith("concat:") else [bare])
    return [Path(p) for p in dict.fromkeys(pieces) if p and Path(p).exists()]


def check_bootstrap(n_boot: int | None) -> None:
    if n_boot is not None and not 0 <= n_boot <= MAX_BOOTSTRAP:
        raise ConfigError(f"--bootstrap must be in [0, {MAX_BOOTSTRAP:,}] (0: no confidence intervals), "
                          f"not {n_boot}")


def open_head(folder: str | Path, protocol: str | None = None, command: str = "protlm evaluate") -> TrainedHead:
    """The head folder, checked: a folder written by ``protlm train`` (of ``protocol`` when given)."""
    folder = Path(folder)
    if not (folder / HEAD_JSON).is_file():
        raise InputError(f"--head {folder}: not a trained head folder (no {HEAD_JSON}; expected a folder written by "
                         f"protlm train)")
    head = load_head(folder)
    if (folder / "card.json").is_file():  # a shipped predictor's folder (or a copy): its files must be the card's
        from protlm.tasks.headfile import check_card_files, read_card

        check_card_files(folder, read_card(folder))
    if protocol is not None and head.config.protocol != protocol:
        raise ConfigError(f"--head {folder}: a {head.config.protocol} head, not a {protocol} head; use {command}")
    return head


def contact_config(tree: dict) -> TaskConfig:
    """A config tree of ``protlm contacts``: no ``protocol:`` means contact prediction."""
    tree.setdefault("protocol", CONTACTS)
    config = build_task_config(tree)
    if config.protocol != CONTACTS:
        raise ConfigError(f"config protocol: {config.protocol} is not contact prediction ({CONTACTS}); "
                          f"use protlm train")
    return config


def attention_config(model: str, *, name: str | None = None, train_chains: int = 30, eval_chains: int = 200,
                     early_stop_chains: int = 100, max_length: int = 300, C: float = 0.15, penalty: str = "l1",
                     seed: int = 0, n_boot: int = 1000) -> TaskConfig:
    """``protlm contacts attention``: a one-line ``attention_lr`` config (ESM's recipe)."""
    return contact_config({
        "name": name or f"contacts_attention_{Path(model.split(':', 1)[-1]).name}",
        "protocol": CONTACTS,
        "embedder": model,
        "data": {"train_chains": train_chains, "eval_chains": eval_chains, "early_stop_chains": early_stop_chains,
                 "max_length": max_length},
        "head": {"type": "attention_lr", "C": C, "penalty": penalty},
        "train": {"seed": seed},
        "evaluate": {"n_boot": n_boot},
    })


def train_command(config: TaskConfig, out: str | Path, *, overwrite: bool = False, data_dir=None, cache_dir=None,
                  progress: Callable[[str, dict], None] | None = None, resume: bool = False,
                  finish: bool = False) -> dict:
    """``protlm train``: the head folder is checked before any embedding or training (an existing
    head needs ``overwrite``; the folder must be writable), then trained and written."""
    out = Path(out)
    if config.finetuning and other_process():
        return train(config, out, data_dir, cache_dir, None, resume=resume, finish=finish)  # process 0 checks
    if resume and overwrite:
        raise ConfigError("--resume continues an interrupted run, --overwrite starts again: give one")
    if resume:
        # a finished run removes its checkpoint: head.json beside one is the head an interrupted
        # --overwrite run was to replace (kept until then), so that run can be resumed
        if (out / HEAD_JSON).exists() and state_folder(out) is None:
            raise InputError(f"--out {out}: the run is already finished (head.json is written); nothing to resume")
        if state_folder(out) is None:
            raise InputError(f"--out {out}: no interrupted training run to resume ({STATE_FOLDER}/ is missing; a head "
                             f"on frozen features writes it once an epoch has run for train.checkpoint_seconds)")
    else:
        check_output_dir(out, overwrite=overwrite, marker=HEAD_JSON)
        held = [name for name in HEAD_FILES if (out / name).exists()]
        if held and not overwrite:  # a folder of something else: train would replace or delete these
            raise InputError(f"--out {out}: already holds {', '.join(held)}; pass --overwrite to replace them or "
                             f"choose another folder")
    check_apart(out, [p for p in embedder_paths(config.embedder_name) if p.is_dir()])
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "head folder", beside=True):
        if overwrite:
            RunState(out, "").clear()
        return train(config, out, data_dir, cache_dir, progress, resume=resume, finish=finish)


def evaluate_command(head_dir: str | Path, request: dict, *, data_dir=None, embedder: str | None = None,
                     cache_dir=None, n_boot: int | None = None, out: str | Path | None = None,
                     overwrite: bool = False, protocol: str | None = None,
                     view: Callable[[TrainedHead, dict], dict] | None = None) -> tuple[TrainedHead, dict]:
    """``protlm evaluate``: the head scored on the sets its protocol makes of ``request`` (a
    benchmark name, a file, a split, …); the document (``view(head, doc)`` when given) written to
    ``out``."""
    if out is not None:
        check_output_file(out, overwrite=overwrite, create_parent=True,
                          inputs=[request.get("file"), data_dir, Path(head_dir) / HEAD_JSON,
                                  Path(head_dir) / HEAD_WEIGHTS])
        check_apart(out, [head_dir])
    check_bootstrap(n_boot)
    head = open_head(head_dir, protocol)
    sets = head.protocol.evaluation_sets(head, request, data_dir)
    res = evaluate(head, sets, embedder, cache_dir, n_boot)
    doc = {"head": str(head_dir), "task": head.config.name, "protocol": head.config.protocol,
           "embedder": embedder or head.config.embedder_name, "sets": res}
    if view is not None:
        doc = view(head, doc)
    if out is not None:
        write_bytes(Path(out), json_bytes(doc))
    return head, doc


def predict_command(head_dir: str | Path, fasta: str | Path, out: str | Path, *, overwrite: bool = False,
                    options: dict | None = None, embedder: str | None = None, cache_dir=None,
                    protocol: str | None = None) -> dict:
    """``protlm predict``: every protein of a FASTA file (sequences as written: an HDF5 embedder is
    looked up by their hash) through the head; the protocol writes the predictions."""
    if not Path(fasta).exists():
        raise InputError(f"--input {fasta}: no such file (a FASTA file is expected)")
    if Path(fasta).is_dir():
        raise InputError(f"--input {fasta}: is a folder (a FASTA file is expected)")
    options = dict(options or {})
    truth = options.get("truth")
    if truth and not Path(truth).exists():
        raise InputError(f"--truth {truth}: no such file (coordinates in the contacts npz layout)")
    if options.get("max_residues") is not None and options["max_residues"] < 1:
        raise ConfigError("--max-residues must be >= 1")
    head = open_head(head_dir, protocol, "protlm predict")
    check_apart(out, [head_dir], "--output", what="the head folder ")
    head.protocol.check_output(out, overwrite=overwrite, inputs=[fasta, head_dir])
    records = list(read_fasta(fasta, CleaningPolicy(rare="keep")))
    if not records:
        raise InputError(f"{fasta}: no records")
    options["head"] = str(head_dir)
    result = predict_file(head, [r.id for r in records], [r.sequence for r in records], out, options, embedder,
                          cache_dir)
    result.setdefault("summary", f"predicted {len(records):,} proteins with {head_dir} → {out}")
    return result


def export_fasta(config: TaskConfig, out: str | Path, *, overwrite: bool = False, data_dir=None, split: str = "all",
                 inputs=()) -> dict:
    """``protlm export-fasta``: the proteins a task config uses, ``>id SET=NAME`` one line each.

    The header is biotrainer 2.x's: an upper-case ``SET=`` (biotrainer_core's FASTA parser reads
    ``[A-Z_]+=value`` only), ``val`` for the validation set, ``train``, and a test set's own name
    (biotrainer treats any other SET value as a named test set). No ``TARGET=``: the file lists
    the sequences to embed (``protlm embed``, ``--key hash``), not a training file.
    protlm's :func:`protlm.data.benchmarks.load_biotrainer_fasta` reads this form and the older
    ones (``set=valid``, ``SET=train VALIDATION=True``)."""
    check_output_file(out, overwrite=overwrite, inputs=list(inputs), option="--out", create_parent=True)
    proteins = config.protocol_obj.proteins(config, data_dir, split)
    biotrainer_set = {"valid": "val"}
    write_bytes(Path(out), "".join(f">{pid} SET={biotrainer_set.get(name, name)}\n{seq}\n"
                                   for pid, seq, name in proteins).encode())
    counts: dict[str, int] = {}
    for _, _, name in proteins:
        counts[name] = counts.get(name, 0) + 1
    return {"out": str(out), "proteins": len(proteins), "sets": counts}


def contact_metrics(sets: dict, split: str, task: str, embedder: str, head_type: str) -> dict:
    """The one set's contact metrics, as ``protlm contacts`` prints and writes them."""
    (name, by_target), = sets.items()
    return {**by_target["contacts"], "split": split, "set": name, "name": task, "embedder": embedder,
            "head": head_type}


def contact_split_label(split: str | None, include_early_stop: bool = False) -> str:
    return ("train (the chains the head was trained on)" if split == "train" else
            "validation" + (" (early-stopping chains included)" if include_early_stop
                            else " (held out from early stopping)"))
