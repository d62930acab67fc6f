"""The ``residues_to_class`` protocol (contact prediction): train, evaluate, predict.

``protlm train/evaluate/predict`` call these three functions when a config says
``protocol: residues_to_class``; ``protlm contacts`` calls them too. A trained head is a folder:

- ``head.json`` — everything needed to rebuild the predictor: protocol, embedder spec, head type
  and hyper-parameters, input width, data conventions (threshold, minimum separation), the chains
  it was trained and early-stopped on, the training summary, protlm's version;
- ``head.safetensors`` — the weights (never pickle);
- ``metrics.json`` — precision on the held-out validation chains, with bootstrap CIs.

Evaluation splits the validation split in two, by a seeded permutation: ``early_stop_chains``
choose the epoch, the next ``eval_chains`` are reported. The data set has no test split, so this
keeps the reported chains out of every decision.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from protlm import __version__
from protlm.contacts.config import ContactConfig, parse_config
from protlm.contacts.data import (Chain, atomic_write, contact_map, load_chains, locate_stretch, read_full_sequences, resolve_npz,
                                  scored_pairs)
from protlm.errors import ConfigError, InputError

log = logging.getLogger("protlm.contacts")

PROTOCOL = "residues_to_class"
DEFAULT_DATA = Path(os.environ.get("PROTLM_DATA", "../shared/data")) / "contacts"
REDUNDANCY_CAVEAT = ("chains keep NetSurfP-2.0's 25% identity cull between train and validation, but a few "
                     "hundred have remote homologs across sets (see ../shared/data/CATALOG.md); no test split "
                     "exists here, so numbers are on held-out validation chains")


# --------------------------------------------------------------------------- small helpers


def write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write (temp file + rename)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _save_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    def write(tmp: str) -> None:
        from protlm.outputs import default_mode

        save_file(arrays, tmp)
        default_mode(tmp)  # safetensors creates 0600 files; everything else protlm writes is 0644

    atomic_write(Path(path), write)


def _data_path(cfg: ContactConfig, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return resolve_npz(data_dir)
    if cfg.data.path:
        return resolve_npz(cfg.data.path)
    return resolve_npz(DEFAULT_DATA)


def _spec_for_storage(spec: str) -> str:
    """LM folders are stored as absolute paths (a head must load from any working directory)."""
    from protlm.models.hf import RANDOM_PREFIX, parse_lm_spec

    path, random_init = parse_lm_spec(spec)
    p = Path(path)
    if p.exists():
        path = str(p.resolve())
    return f"{RANDOM_PREFIX}{path}" if random_init else path


def _progress(iterable, desc: str, total: int | None = None):
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, disable=None, dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------- chains


def select_chains(cfg: ContactConfig, npz: Path) -> dict[str, list[Chain]]:
    """Train chains (seeded sample), and the validation split cut into early-stop and eval chains."""
    d = cfg.data
    full = read_full_sequences(d.full_sequences) if d.full_sequences else None
    train = load_chains(npz, "train", max_length=d.max_length, min_length=d.min_length, max_chains=d.train_chains,
                        seed=d.seed, full_sequences=full)
    valid = load_chains(npz, "valid", max_length=d.max_length, min_length=d.min_length, full_sequences=full)
    order = np.random.default_rng(d.seed + 1).permutation(len(valid))
    early = [valid[k] for k in sorted(order[:d.early_stop_chains])]
    rest = [valid[k] for k in sorted(order[d.early_stop_chains:d.early_stop_chains + d.eval_chains])]
    if not train:
        raise InputError(f"{npz}: no training chains between {d.min_length} and {d.max_length} residues")
    if not rest:
        raise InputError(f"{npz}: no validation chains left for evaluation after {len(early)} early-stopping "
                         "chains; lower data.early_stop_chains")
    return {"train": train, "early_stop": early, "eval": rest}


# --------------------------------------------------------------------------- embedders


def make_embedder(spec: str, seed: int = 0):
    """The embedder of ``spec``; ``random-init:FOLDER`` gives the same LM shape with random weights (``seed``)."""
    from protlm.embed.runner import load_embedder
    from protlm.embed.spec import EmbedOptions

    return load_embedder(spec, EmbedOptions(seed=seed))


def embed_chains(embedder, chains: list[Chain], chunk: int = 64) -> list[np.ndarray]:
    """Per-residue embeddings of the structure stretches (the LM reads the full sequence when known)."""
    out: list[np.ndarray] = []
    for k in _progress(range(0, len(chains), chunk), "embed", total=(len(chains) + chunk - 1) // chunk):
        part = chains[k:k + chunk]
        for c, e in zip(part, embedder.embed([c.model_input for c in part])):
            out.append(e[c.offset:c.offset + len(c)] if c.full_seq is not None else e)
    return out


# --------------------------------------------------------------------------- the predictor


def read_head_meta(head_dir: Path) -> dict:
    """``head.json`` of a contact head folder, checked (cheap: call it before any heavy work)."""
    meta_path = Path(head_dir) / "head.json"
    if not meta_path.is_file():
        raise InputError(f"{head_dir}: no head.json (expected a folder written by protlm contacts train)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{meta_path}: not valid JSON ({exc.msg})") from None
    if meta.get("protocol") != PROTOCOL:
        raise InputError(f"{head_dir}: a {meta.get('protocol')!r} head, not a contact ({PROTOCOL}) head")
    return meta


class ContactPredictor:
    """A trained head with its embedder or LM: chains or sequences in, L × L probabilities out."""

    def __init__(self, meta: dict, *, head=None, logreg=None, embedder=None, lm=None):
        self.meta = meta
        self.head = head
        self.logreg = logreg
        self.embedder = embedder
        self.lm = lm

    @property
    def kind(self) -> str:
        return self.meta["head"]["type"]

    @property
    def position_limit(self) -> int | None:
        """Longest protein the attention path can map in one window (absolute-position LMs); else None."""
        return self.lm.family.max_residues if self.lm is not None else None

    @classmethod
    def load(cls, head_dir: Path | str) -> "ContactPredictor":
        head_dir = Path(head_dir)
        meta = read_head_meta(head_dir)
        from safetensors.numpy import load_file

        try:
            state = load_file(str(head_dir / "head.safetensors"))
        except (OSError, Exception) as exc:  # missing or corrupt
            raise InputError(f"{head_dir}/head.safetensors: cannot be read ({type(exc).__name__})") from None
        kind = meta["head"]["type"]
        params = {k: v for k, v in meta["head"].items() if k != "type"}
        seed = int(meta.get("embedder_seed", 0))
        if kind == "attention_lr":
            from protlm.contacts.attention import AttentionLogReg, load_lm

            logreg = AttentionLogReg.from_state(state, {k: params[k] for k in ("C", "penalty", "max_iter")})
            return cls(meta, logreg=logreg, lm=load_lm(meta["embedder"], seed=seed))
        import torch

        from protlm.contacts.heads import build_head

        head = build_head(kind, int(meta["input_dim"]), params)
        head.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        head.eval()
        return cls(meta, head=head, embedder=make_embedder(meta["embedder"], seed))

    def predict_chains(self, chains: list[Chain], desc: str = "predict") -> list[np.ndarray]:
        """Contact probabilities (float32, L × L, symmetric) for each chain's structure stretch."""
        if self.kind == "attention_lr":
            from protlm.contacts.attention import attention_features

            return [self.logreg.predict_proba(attention_features(self.lm, c)) for c in _progress(chains, desc)]
        from protlm.contacts.heads import predict_map

        budget = int(self.meta.get("config", {}).get("train", {}).get("pair_budget", 1 << 17))
        out = []
        for k in range(0, len(chains), 64):
            part = chains[k:k + 64]
            embs = embed_chains(self.embedder, part)
            out.extend(predict_map(self.head, e, budget) for e in _progress(embs, desc))
        return out


def score_chains(probs: list[np.ndarray], chains: list[Chain], threshold: float, min_separation: int, *,
                 n_boot: int, seed: int) -> dict:
    """Precision table (ranges × top-L/k) with bootstrap CIs over the chains."""
    from protlm.contacts.metrics import evaluate_maps

    truth = [contact_map(c.ca, c.cb, threshold) for c in chains]
    if min_separation != 6:
        log.info("min_separation %d only affects training; metric ranges start at 6 by convention", min_separation)
    return evaluate_maps(probs, [t[0] for t in truth], [t[1] for t in truth], n_boot=n_boot, seed=seed,
                         ids=[c.id for c in chains])


# --------------------------------------------------------------------------- train


def _fit_attention(cfg: ContactConfig, chains: dict[str, list[Chain]]) -> tuple[ContactPredictor, dict, dict]:
    from protlm.contacts.attention import AttentionLogReg, load_lm, training_pairs

    t0 = time.time()
    lm = load_lm(cfg.embedder, seed=cfg.train.seed)
    hp = cfg.head
    x, y = training_pairs(lm, chains["train"], min_separation=cfg.data.min_separation, max_pairs=hp["max_pairs"],
                          seed=cfg.train.seed, threshold=cfg.data.threshold)
    logreg = AttentionLogReg(x.shape[1], C=hp["C"], penalty=hp["penalty"], max_iter=hp["max_iter"]).fit(
        x, y, seed=cfg.train.seed)
    summary = {"pairs": int(len(y)), "contact_fraction": float(y.mean()), "features": int(x.shape[1]),
               "layers": lm.layers, "heads": lm.heads, "nonzero_weights": int((logreg.coef != 0).sum()),
               "top_maps": logreg.top_maps(lm), "seconds": time.time() - t0}
    meta_extra = {"input_dim": int(x.shape[1]), "lm": {"layers": lm.layers, "heads": lm.heads}}
    return ContactPredictor({}, logreg=logreg, lm=lm), summary, meta_extra | {"_state": logreg.state()}


def _fit_supervised(cfg: ContactConfig, chains: dict[str, list[Chain]]) -> tuple[ContactPredictor, dict, dict]:
    from protlm.contacts.heads import Example, TrainOptions, build_head, fit_head

    embedder = make_embedder(cfg.embedder, cfg.train.seed)

    def examples(cs: list[Chain]) -> list:
        out = []
        for c, e in zip(cs, embed_chains(embedder, cs)):
            contacts, observed = contact_map(c.ca, c.cb, cfg.data.threshold)
            out.append(Example(c.id, np.asarray(e, dtype=np.float32), contacts, observed,
                               scored_pairs(observed, cfg.data.min_separation)))
        return out

    train = examples(chains["train"])
    early = examples(chains["early_stop"])
    if not early:
        raise ConfigError("config data.early_stop_chains: no validation chains for early stopping")
    dim = int(train[0].emb.shape[1])
    import torch

    torch.manual_seed(cfg.train.seed)  # the initial weights, whatever ran before in this process
    head = build_head(cfg.head_type, dim, cfg.head)
    opts = TrainOptions(**{k: getattr(cfg.train, k) for k in TrainOptions.__dataclass_fields__})
    summary = fit_head(head, train, early, opts, pair_budget_eval=cfg.train.pair_budget)
    state = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
    return ContactPredictor({}, head=head, embedder=embedder), summary, {"input_dim": dim, "_state": state}


def train(config: dict | ContactConfig, out_dir: Path, data_dir: Path | None = None) -> dict:
    """Train a contact head from a config and write OUT/head.json, head.safetensors, metrics.json.

    Returns the metrics dict (precision per range and top-L/k on the held-out validation chains,
    with bootstrap CIs; ``headline`` = P@L/5 long range).
    """
    cfg = config if isinstance(config, ContactConfig) else parse_config(config)
    out_dir = Path(out_dir)
    npz = _data_path(cfg, data_dir)
    chains = select_chains(cfg, npz)
    print(f"contacts: {cfg.head_type} on {cfg.embedder}: {len(chains['train'])} train chains, "
          f"{len(chains['early_stop'])} early-stopping and {len(chains['eval'])} evaluation chains (validation)",
          file=sys.stderr)
    t0 = time.time()
    fit = _fit_attention if cfg.head_type == "attention_lr" else _fit_supervised
    predictor, summary, extra = fit(cfg, chains)
    state = extra.pop("_state")
    meta = {
        "protocol": PROTOCOL, "task": "contact prediction", "protlm_version": __version__, "name": cfg.name,
        "embedder": _spec_for_storage(cfg.embedder), "embedder_seed": cfg.train.seed,
        "head": {"type": cfg.head_type, **cfg.head}, **extra,
        "conventions": {"contact": f"CB-CB < {cfg.data.threshold} A (CA where CB is missing)",
                        "min_separation_trained": cfg.data.min_separation},
        "data": {"npz": str(npz.resolve()), "full_sequences": cfg.data.full_sequences,
                 "train_ids": [c.id for c in chains["train"]],
                 "early_stop_ids": [c.id for c in chains["early_stop"]]},
        "config": cfg.as_dict(), "training": summary, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    predictor.meta = meta
    out_dir.mkdir(parents=True, exist_ok=True)
    _save_tensors(out_dir / "head.safetensors", state)
    write_json(out_dir / "head.json", meta)
    probs = predictor.predict_chains(chains["eval"], desc="evaluate")
    metrics = score_chains(probs, chains["eval"], cfg.data.threshold, cfg.data.min_separation,
                           n_boot=cfg.evaluate.n_boot, seed=cfg.evaluate.seed)
    metrics |= {"split": "validation (held out from early stopping)", "chains": len(chains["eval"]),
                "name": cfg.name, "embedder": cfg.embedder, "head": cfg.head_type, "caveat": REDUNDANCY_CAVEAT,
                "train_seconds": time.time() - t0}
    write_json(out_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- evaluate


EVAL_EXTRA = ("max_chains", "max_length", "n_boot", "seed", "include_early_stop")


def evaluate(head_dir: Path, data_dir: Path | None = None, split: str = "validation",
             extra: dict | None = None) -> dict:
    """Precision (ranges × top-L/k) with bootstrap CIs of a saved head on a split of the contacts data.

    ``split``: ``validation`` (default: the validation chains not used for early stopping) or
    ``train``. ``extra`` may set ``max_chains`` (default: the config's eval_chains), ``max_length``,
    ``n_boot``, ``seed`` (bootstrap) and ``include_early_stop`` (score those chains too).
    """
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(EVAL_EXTRA))
    if unknown:
        raise ConfigError(f"evaluate: unknown option {unknown[0]!r}; expected one of {list(EVAL_EXTRA)}")
    if split not in ("validation", "valid", "train"):
        raise ConfigError(f"--split must be validation or train, not {split!r}")
    predictor = ContactPredictor.load(head_dir)
    cfg = parse_config(predictor.meta["config"])
    npz = resolve_npz(data_dir) if data_dir is not None else Path(predictor.meta["data"]["npz"])
    if data_dir is None and not npz.is_file():
        npz = _data_path(cfg, None)
    d = cfg.data
    max_length = extra.get("max_length", d.max_length)
    n_chains = int(extra.get("max_chains", d.eval_chains))
    full = read_full_sequences(d.full_sequences) if d.full_sequences else None
    if split == "train":
        trained = set(predictor.meta["data"]["train_ids"])
        pool = [c for c in load_chains(npz, "train", max_length=max_length, min_length=d.min_length,
                                       full_sequences=full) if c.id in trained]
        chains = pool[:n_chains]
        label = "train (the chains the head was trained on)"
    else:
        # The same seeded order as at training time: by default the first n chains after the
        # early-stopping ones are exactly the chains train() reported.
        valid = load_chains(npz, "valid", max_length=max_length, min_length=d.min_length, full_sequences=full)
        order = np.random.default_rng(d.seed + 1).permutation(len(valid))
        early = set(predictor.meta["data"]["early_stop_ids"])
        if extra.get("include_early_stop"):
            picked = list(order[:n_chains])
        else:
            picked = [k for k in order if valid[k].id not in early][:n_chains]
        chains = [valid[k] for k in sorted(picked)]
        label = "validation" + (" (early-stopping chains included)" if extra.get("include_early_stop")
                                else " (held out from early stopping)")
    if not chains:
        raise InputError(f"{npz}: no {split} chains to evaluate with these limits")
    probs = predictor.predict_chains(chains, desc="evaluate")
    metrics = score_chains(probs, chains, d.threshold, d.min_separation,
                           n_boot=int(extra.get("n_boot", cfg.evaluate.n_boot)),
                           seed=int(extra.get("seed", cfg.evaluate.seed)))
    return metrics | {"split": label, "chains": len(chains), "name": cfg.name, "embedder": cfg.embedder,
                      "head": cfg.head_type, "caveat": REDUNDANCY_CAVEAT}


# --------------------------------------------------------------------------- predict


def _truth_chains(truth: Path | None, ids: list[str]) -> dict[str, Chain]:
    """Structures of the FASTA's ids that the truth file holds (others are predicted, not scored)."""
    if truth is None:
        return {}
    from protlm.contacts.data import read_npz

    npz = resolve_npz(truth)
    z = read_npz(npz)
    if "netsurfp_id" not in z:
        raise InputError(f"{npz}: missing array netsurfp_id (see docs/contacts.md for the layout)")
    present = set(z["netsurfp_id"].astype(str))
    wanted = [i for i in ids if i in present]
    return {c.id: c for c in load_chains(npz, None, ids=wanted)} if wanted else {}


def predict(head_dir: Path, fasta: Path, out_dir: Path, *, truth: Path | None = None, pictures: bool = True,
            max_residues: int = 3000) -> dict:
    """Contact probabilities for every protein of a FASTA file: OUT/<id>.npz (+ OUT/<id>.png).

    Each npz holds ``probs`` (L × L float32, symmetric) and ``sequence``. With ``truth`` (a file
    in the contacts npz layout) proteins whose id is in it are also scored: the structure stretch
    is located in the FASTA sequence (the stored offset, checked), ``contacts`` (stretch × stretch)
    and ``offset`` are added to the npz, precision goes into the summary, and the picture
    compares predicted and true contacts. Proteins longer than ``max_residues`` are skipped and
    listed (an L × L map grows as L²).

    File names come from ids through :func:`protlm.outputs.safe_names` (an id such as
    ``../../x`` or ``/abs`` never leaves ``out_dir``; ``A`` and ``./A`` get different names);
    ``predictions.json`` lists each id with its ``npz`` (and ``png``) path.
    """
    from protlm.data.fasta import read_fasta
    from protlm.outputs import safe_names
    from protlm.contacts.metrics import CUTOFFS, RANGES, precision_at

    out_dir = Path(out_dir)
    read_head_meta(head_dir)
    records = list(read_fasta(fasta))
    known = _truth_chains(Path(truth) if truth is not None else None, [r.id for r in records])
    predictor = ContactPredictor.load(head_dir)
    threshold = float(predictor.meta["config"]["data"]["threshold"])
    out_dir.mkdir(parents=True, exist_ok=True)
    names = safe_names(r.id for r in records)
    done, skipped, scored = [], [], []
    limit = predictor.position_limit
    for rec in _progress(records, "contacts"):
        reason = None
        if len(rec.sequence) > max_residues:
            reason = f"longer than --max-residues {max_residues}"
        elif limit is not None and len(rec.sequence) > limit:
            reason = f"longer than the LM's position limit ({limit}); attention maps need one window"
        if reason:
            skipped.append({"id": rec.id, "length": len(rec.sequence), "reason": reason})
            log.warning("skipped %s (%d residues): %s", rec.id, len(rec.sequence), reason)
            continue
        full = Chain(id=rec.id, seq=rec.sequence, ca=np.zeros((0, 3)), cb=np.zeros((0, 3)))
        probs = predictor.predict_chains([full], desc=rec.id)[0]
        arrays = {"probs": probs.astype(np.float32), "sequence": np.array(rec.sequence)}
        npz_path = out_dir / f"{names[rec.id]}.npz"
        entry = {"id": rec.id, "length": len(rec.sequence), "npz": str(npz_path)}
        true_map = None
        t = known.get(rec.id)
        if t is not None:
            off = locate_stretch(rec.sequence, t.seq, t.offset)
            true_map, observed = contact_map(t.ca, t.cb, threshold)
            stretch = probs[off:off + len(t), off:off + len(t)]
            arrays |= {"contacts": true_map, "observed": observed, "offset": np.array(off)}
            entry["precision"] = {r: {c: precision_at(stretch, true_map, observed, rng=r, divisor=d)
                                      for c, d in CUTOFFS.items()} for r in RANGES}
            entry["offset"] = off
            entry["stretch_length"] = len(t)
            scored.append(entry)
        atomic_write(npz_path, lambda tmp, a=arrays: _savez(tmp, a))
        if pictures:
            from protlm.contacts.plot import contact_figure

            png = out_dir / f"{names[rec.id]}.png"
            if true_map is not None:
                o = entry["offset"]
                contact_figure(probs[o:o + len(t), o:o + len(t)], true_map, png, title=rec.id,
                               observed=arrays["observed"])
            else:
                contact_figure(probs, None, png, title=rec.id)
            entry["png"] = str(png)
        done.append(entry)
    result = {"head": str(head_dir), "input": str(fasta), "out": str(out_dir), "proteins": len(done),
              "scored": len(scored), "skipped": skipped, "predictions": done}
    write_json(out_dir / "predictions.json", result)
    return result


def _savez(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


# --------------------------------------------------------------------------- the benchmark suite


BASELINE_EMBEDDERS = ("onehot", "blosum62")


def _same_config(run_dir: Path, cfg: ContactConfig) -> bool:
    try:
        meta = json.loads((run_dir / "head.json").read_text())
        return (run_dir / "metrics.json").is_file() and meta.get("config") == json.loads(json.dumps(cfg.as_dict()))
    except (OSError, json.JSONDecodeError):
        return False


def _floors(row: dict, rows: list[dict]) -> list[dict]:
    """The rows a result is compared with: the random-init LM for attention, the baselines for heads."""
    from protlm.models.hf import RANDOM_PREFIX

    emb = row["embedder"]
    if emb in BASELINE_EMBEDDERS or emb.startswith(RANDOM_PREFIX):
        return []
    if row["head"] == "attention_lr":
        return [r for r in rows if r["head"] == "attention_lr" and r["embedder"].startswith(RANDOM_PREFIX)]
    return [r for r in rows if r["head"] == row["head"] and r["embedder"] in BASELINE_EMBEDDERS]


def _cell(e: dict) -> str:
    if e["mean"] is None:
        return "—"
    return f"{e['mean']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]" if e.get("ci") else f"{e['mean']:.3f}"


def run_benchmarks(suite: Path | str, out: Path | str, data_dir: Path | None = None, *,
                   names: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """Train/evaluate every ``contacts_*.yaml`` of a folder; write OUT/results.json and OUT/results.md.

    Each config trains into ``OUT/<config name>/``; a finished run made from the same config is
    reused, so an interrupted suite resumes. The table gives P@L/5, L/2, L by range with bootstrap
    CIs and the chance level; each LM row is also compared pairwise (same chains) with its floor:
    the random-init LM for the attention regression, one-hot and BLOSUM62 for the supervised heads.
    """
    from protlm.contacts.config import load_config
    from protlm.contacts.metrics import paired_difference

    suite, out = Path(suite), Path(out)
    files = [suite] if suite.is_file() else sorted(suite.glob("contacts_*.yaml")) if suite.is_dir() else []
    if names:
        by_stem = {f.stem: f for f in files}
        missing = [n for n in names if n not in by_stem]
        if missing:
            raise ConfigError(f"--only {missing[0]}: no such config in {suite} (have: {', '.join(sorted(by_stem))})")
        files = [by_stem[n] for n in names]
    if not files:
        raise InputError(f"--suite {suite}: no contact configs (contacts_*.yaml) found")
    rows = []
    for path in files:
        cfg = load_config(path, overrides)
        run_dir = out / cfg.name
        if _same_config(run_dir, cfg):
            print(f"{cfg.name}: reusing {run_dir}", file=sys.stderr)
            metrics = json.loads((run_dir / "metrics.json").read_text())
        else:
            metrics = train(cfg, run_dir, data_dir)
        rows.append({"name": cfg.name, "config": str(path), "embedder": cfg.embedder, "head": cfg.head_type,
                     "dir": str(run_dir), "metrics": metrics})
    comparisons = []
    for row in rows:
        for floor in _floors(row, rows):
            try:
                d = paired_difference(row["metrics"], floor["metrics"], rng="long", cut="L/5")
            except ValueError:
                continue
            comparisons.append({"a": row["name"], "b": floor["name"], **d})
    result = {"suite": str(suite), "out": str(out), "headline": "P@L/5, long (>=24)", "caveat": REDUNDANCY_CAVEAT,
              "rows": [{k: v for k, v in r.items() if k != "metrics"} | {
                  "headline": r["metrics"]["headline"], "precision": r["metrics"]["precision"],
                  "chance": r["metrics"].get("chance"), "chains": r["metrics"]["chains"]} for r in rows],
              "comparisons": comparisons}
    write_json(out / "results.json", result)
    lines = ["# Contact prediction benchmark", "",
             f"Held-out validation chains; mean over proteins with 95% bootstrap CIs. Headline: P@L/5, long range "
             f"(|i-j| >= 24). Caveat: {REDUNDANCY_CAVEAT}.", "",
             "| run | embedder | head | P@L/5 long | P@L/2 long | P@L long | P@L/5 medium | P@L/5 short | chains |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["metrics"]["precision"]
        lines.append(f"| {r['name']} | {r['embedder']} | {r['head']} | **{_cell(p['long']['L/5'])}** | "
                     f"{_cell(p['long']['L/2'])} | {_cell(p['long']['L'])} | {_cell(p['medium']['L/5'])} | "
                     f"{_cell(p['short']['L/5'])} | {r['metrics']['chains']} |")
    chance = rows[0]["metrics"].get("chance") or {}
    if chance:
        lines += ["", "Chance level (contact density): " + ", ".join(f"{k} {v:.3f}" for k, v in chance.items()
                                                                     if v is not None)]
    if comparisons:
        lines += ["", "| paired difference (P@L/5 long, same chains) | mean | 95% CI |", "|---|---|---|"]
        lines += [f"| {c['a']} − {c['b']} | {c['mean_difference']:+.3f} | [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] |"
                  for c in comparisons]
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    result["table"] = "\n".join(lines)
    return result
