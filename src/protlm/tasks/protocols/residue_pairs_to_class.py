"""``residue_pairs_to_class``: contact prediction — for every residue pair, contact or not
(CB–CB < 8 Å, CA where CB is missing).

Data: the shared contacts set (``coords_ca_cb.npz``, :mod:`protlm.tasks.contacts.data`), or any
file in its layout. ``data:`` (:class:`ContactDataConfig`) picks a seeded sample of training
chains and splits the validation chains in two by a seeded permutation: ``early_stop_chains``
choose the epoch, the next ``eval_chains`` are reported (the test set ``held_out_valid``) — the
data set has no test split, so this keeps the reported chains out of every decision. The LM reads
the whole protein sequence when ``full_sequences`` gives it; its output is cut to the structure
stretch.

Inputs: per-residue embeddings from any embedder or HDF5 file, through the feature cache
(:mod:`protlm.tasks.features`) — for the pair MLP and the 2-D ResNet — or an LM's attention maps
for ``attention_lr`` (ESM's recipe, fit in closed form).

Training (the engine's loop, :func:`protlm.tasks.train.fit_head`): binary cross-entropy on every
pair with |i − j| ≥ ``min_separation`` whose residues both have coordinates. Chains longer than
``train.crop`` are cut to a random window each epoch; crops are grouped into optimisation steps by
``train.pair_budget`` pairs (at most ``train.batch_size`` crops). Early stopping on the mean
**P@L/5 long range** of the early-stopping chains (higher is better).

Metrics (:mod:`protlm.tasks.contacts.metrics`): precision of the top L/5, L/2, L pairs per
separation range (short 6–11, medium 12–23, long ≥ 24), mean over proteins, bootstrap CIs; the
headline is P@L/5 long. Predictions: one ``<id>.npz`` (``probs``: L × L) and a PNG per protein.

The name before protlm 0.4 was ``residues_to_class``, which in biotrainer means per-residue
embeddings → one class per protein; a contact config with the old name is read as this protocol
with a deprecation warning.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from protlm.embed.spec import parse_spec
from protlm.errors import ConfigError, InputError
from protlm.io.atomic import write_json, write_npz
from protlm.io.outputs import check_output_dir, safe_names
from protlm.io.resources import data_root
from protlm.tasks.config import TrainSettings, need
from protlm.tasks.contacts.attention import attention_features, load_lm, training_pairs
from protlm.tasks.contacts.data import (NPZ_NAME, Chain, ChainSet, contact_map, load_chains, locate_stretch,
                                        read_full_sequences, read_structures, resolve_npz, scored_pairs, select_chains)
from protlm.tasks.contacts.metrics import CUTOFFS, RANGES, evaluate_maps, format_table, precision_at
from protlm.tasks.data import RARE_TO_X
from protlm.tasks.finetune import SequenceSource, TokenBatch
from protlm.tasks.heads import FittedPairHead, PairHead, get_head, make_head
from protlm.tasks.protocols.base import FitState, Protocol, TaskData, register_deprecated_name, register_protocol
from protlm.io.progress import progress_iter

log = logging.getLogger("protlm.tasks")

NAME = "residue_pairs_to_class"
TARGET = "contacts"
TEST_SET = "held_out_valid"
#: ESM fit its regression on 20 proteins; a few dozen keep the fit cheap and stable.
ATTENTION_TRAIN_CHAINS = 30
BASELINES = ("onehot", "blosum62")
REDUNDANCY_CAVEAT = ("chains keep NetSurfP-2.0's 25% identity cull between train and validation, but a few "
                     "hundred have remote homologs across sets (see ../shared/data/CATALOG.md); no test split "
                     "exists here, so numbers are on held-out validation chains")


@dataclass
class ContactDataConfig:
    path: str | None = None  # folder with coords_ca_cb.npz, or the file; --data overrides it
    full_sequences: str | None = None  # FASTA of whole sequences (id → sequence): the LM reads those
    train_chains: int = 300  # attention_lr: default 30
    early_stop_chains: int = 100  # validation chains used to choose the epoch
    eval_chains: int = 200  # other validation chains (disjoint from the early-stopping ones) to report
    max_length: int | None = 300  # longer chains are skipped (null: no cap)
    min_length: int = 30
    threshold: float = 8.0  # Å
    min_separation: int = 6  # pairs closer in sequence are not trained on
    seed: int = 0
    # name → a structure set of one's own (npz): every chain scored; a path, or {file: PATH, full_sequences: FASTA}
    # when the model should read whole sequences (the structure stretch located in them, as for the shared set)
    test: dict[str, str | dict] = field(default_factory=dict)


DATA_KEYS = set(ContactDataConfig.__dataclass_fields__)


def _looks_like_contacts(tree: dict) -> str | None:
    """The old name ``residues_to_class`` in a contact config: its data or its head says so."""
    data, head = tree.get("data"), tree.get("head")
    head_type = head.get("type") if isinstance(head, dict) else None
    if head_type in ("pair_mlp", "resnet2d", "attention_lr"):
        return NAME
    if isinstance(data, dict) and data and set(data) <= DATA_KEYS and not {"train", "valid", "test"} & set(data):
        return NAME
    return None


register_deprecated_name("residues_to_class", _looks_like_contacts)


# --------------------------------------------------------------------------- inputs


@dataclass
class ContactInputs:
    """Chains with their truth and their inputs: embeddings (L × D each), the LM (attention), or,
    when the LM trains with the head (``finetune``), nothing but the sequences: ``lm_limit`` is
    the longest window the LM reads (its position limit; 0 = any)."""

    chains: list[Chain]
    embs: list[np.ndarray] | None
    lm: object | None
    threshold: float
    min_separation: int
    finetune: bool = False
    lm_limit: int = 0

    def __post_init__(self):
        self.truth = [contact_map(c.ca, c.cb, self.threshold) for c in self.chains]
        self.masks = [scored_pairs(obs, self.min_separation) for _, obs in self.truth]

    def __len__(self) -> int:
        return len(self.chains)


class AttentionSource:
    """The inputs of ``attention_lr``: an LM loaded with eager attention (what FeatureSource is to
    the embedding heads)."""

    def __init__(self, spec):
        self.name = spec.name
        self.lm = load_lm(spec.name, seed=spec.options.seed)

    @property
    def dim(self) -> int:
        return self.lm.n_maps

    def identity(self, checksum: bool = True) -> dict:
        return {"kind": "attention", "fingerprint": None, "model": self.name, "layer": None, "level": "pair",
                "dim": self.dim}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _crops(n_examples: int, lengths: list[int], crop: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    out = []
    for k in rng.permutation(n_examples):
        n = lengths[k]
        start = int(rng.integers(0, n - crop + 1)) if n > crop else 0
        out.append((int(k), start, min(n, start + crop)))
    return out


def _steps(crops: list[tuple[int, int, int]], pair_budget: int, batch_size: int) -> list[list[tuple[int, int, int]]]:
    steps, cur, pairs = [], [], 0
    for c in crops:
        p = (c[2] - c[1]) ** 2 // 2
        if cur and (pairs + p > pair_budget or len(cur) >= batch_size):
            steps.append(cur)
            cur, pairs = [], 0
        cur.append(c)
        pairs += p
    if cur:
        steps.append(cur)
    return steps


#: Fine-tuning: the training chains whose base-LM states fix the pair head's input standardisation.
STATS_CHAINS = 64


def _lm_window(chain: Chain, window: slice, limit: int = 0) -> str:
    """What the LM reads for residues ``window`` of a chain's structure stretch when it trains with
    the head: that stretch of its input sequence (the crop is the LM's context, as ProteinLM's
    fine-tuning crops), at most ``limit`` residues."""
    text = chain.model_input[chain.offset + window.start:chain.offset + window.stop]
    if limit and len(text) > limit:
        raise InputError(f"chain {chain.id}: a crop of {len(text)} residues is longer than the LM's position limit "
                         f"({limit}); lower train.crop")
    return text


def _lm_states(model, chain: Chain, limit: int = 0) -> torch.Tensor:
    """The (fine-tuning) LM's states of a whole chain's structure stretch (L × D), read in the widest
    window of its input sequence that the LM takes, centred on the stretch."""
    full, start, n = chain.model_input, chain.offset, len(chain)
    if limit and n > limit:
        raise InputError(f"chain {chain.id}: {n} residues, longer than the LM's position limit ({limit}); lower "
                         f"data.max_length")
    lo, hi = 0, len(full)
    if limit and hi > limit:  # a window of `limit` residues holding the stretch
        lo = max(0, min(start - (limit - n) // 2, len(full) - limit))
        hi = lo + limit
    states = model.residue_states(TokenBatch([full[lo:hi]]))[0]
    return states[start - lo:start - lo + n]


def predict_map(head: nn.Module, emb: np.ndarray, pair_budget: int = 1 << 17) -> np.ndarray:
    """L × L contact probabilities for one embedding (eval mode, no gradients)."""
    head.eval()
    with torch.inference_mode():
        return torch.sigmoid(head(torch.from_numpy(np.asarray(emb, dtype=np.float32)), pair_budget)).numpy()


# --------------------------------------------------------------------------- the protocol


@register_protocol
class ResiduePairsToClass(Protocol):
    name = NAME
    help = "per-residue embeddings (or attention maps) → contact or not for every residue pair"
    output_level = "pair"
    default_head = "pair_mlp"
    data_config = ContactDataConfig
    train_defaults = {"epochs": 20, "batch_size": 8, "patience": 3}
    validation_key = "valid_p_at_l5_long"
    higher_is_better = True
    headline_label = "P@L/5 long"
    scores_valid = False  # the early-stopping chains choose the epoch; the held-out chains are reported
    validation_text = "validation P@L/5 (long range)"
    count_key = "chains"
    data_path_fields = ("path", "full_sequences", "test")  # the structure sets and the FASTA of whole sequences
    legacy_state_keys = ("conventions", "data", "caveat")
    own_tests = (TEST_SET,)  # the held-out validation chains; data.test adds structure sets of one's own

    # ------------------------------------------------------------------ config

    def prepare_tree(self, tree: dict) -> None:
        head = tree.get("head") if isinstance(tree.get("head"), dict) else {}
        if head.get("type") == "attention_lr":

            train = tree.get("train") or {}
            defaults = {**TrainSettings().__dict__, **self.train_defaults}  # a saved head.json lists them all
            extra = sorted(k for k, v in train.items() if k != "seed" and (k not in defaults or v != defaults[k])) \
                if isinstance(train, dict) else []
            if extra:
                raise ConfigError(f"config train.{extra[0]}: attention_lr has no training loop (only train.seed applies)")
            data = tree.get("data")
            if isinstance(data, dict) and "train_chains" not in data:
                tree["data"] = {**data, "train_chains": ATTENTION_TRAIN_CHAINS}
            elif data is None:
                tree["data"] = {"train_chains": ATTENTION_TRAIN_CHAINS}
        tree.setdefault("targets", [{"name": TARGET, "label": TARGET}])
        super().prepare_tree(tree)

    def validate(self, c) -> None:
        d = c.data
        for key in ("train_chains", "early_stop_chains", "eval_chains", "min_length", "min_separation"):
            need(getattr(d, key) >= 1, f"data.{key}", "must be a positive integer")
        need(d.max_length is None or d.max_length >= 1, "data.max_length", "must be a positive integer or null")
        need(d.threshold > 0, "data.threshold", "must be a positive distance in Å")
        need([t.name for t in c.targets] == [TARGET], "targets", f"contact prediction has one target, {TARGET}")
        need(c.train.early_stopping != "loss", "train.early_stopping",
             "contacts stop early on the validation P@L/5 (long range), their headline metric; use metric or leave "
             "it out")
        need(TEST_SET not in d.test, f"data.test.{TEST_SET}", "is the held-out validation chains' name; name the set "
             "another way")
        for name, entry in d.test.items():
            if isinstance(entry, dict):
                need(isinstance(entry.get("file"), str) and set(entry) <= {"file", "full_sequences"}
                     and isinstance(entry.get("full_sequences", ""), str), f"data.test.{name}",
                     "must be a structure set's path or {file: PATH, full_sequences: FASTA}")
            else:
                need(isinstance(entry, str), f"data.test.{name}", "must be a structure set's path (npz)")
        if c.head.type == "attention_lr":
            need(c.embedder_name not in BASELINES, "embedder",
                 f"attention_lr needs a transformer LM folder, not the baseline {c.embedder_name!r}")

    # ------------------------------------------------------------------ data

    @staticmethod
    def npz(config, data_dir) -> Path:
        if data_dir is not None:
            root = Path(data_dir)
            if not (root / NPZ_NAME).is_file() and (root / "contacts" / NPZ_NAME).is_file():
                root = root / "contacts"  # the benchmark data folder
            return resolve_npz(root)
        return resolve_npz(config.data.path or data_root() / "contacts")

    def load_data(self, config, data_dir) -> TaskData:
        d = config.data
        npz = self.npz(config, data_dir)
        full_path = str(Path(d.full_sequences).resolve()) if d.full_sequences else None
        if full_path is not None and not Path(full_path).is_file():
            raise InputError(f"config data.full_sequences: {d.full_sequences}: no such file (a FASTA of whole sequences)")
        full = read_full_sequences(full_path) if full_path else None
        cap = min(d.train_chains, config.train.max_train) if config.train.max_train else d.train_chains  # --set train.max_train
        train = load_chains(npz, "train", max_length=d.max_length, min_length=d.min_length,
                            max_chains=cap, seed=d.seed, full_sequences=full)
        valid = load_chains(npz, "valid", max_length=d.max_length, min_length=d.min_length, full_sequences=full)
        order = np.random.default_rng(d.seed + 1).permutation(len(valid))
        early = [valid[k] for k in sorted(order[:d.early_stop_chains])]
        rest = ChainSet([valid[k] for k in sorted(order[d.early_stop_chains:d.early_stop_chains + d.eval_chains])])
        rest.selection = {"set_chains": len(valid) - len(early), "scored_chains": len(rest), "dropped": [],
                          "max_length": d.max_length, "sample": None,
                          "limits": f"training's report: a seeded sample (data.seed + 1 = {d.seed + 1}) of "
                                    f"data.eval_chains = {d.eval_chains} validation chains of {d.min_length}-"
                                    f"{d.max_length if d.max_length is not None else 'any'} residues "
                                    f"(protlm evaluate scores every chain by default)"}
        if not train:
            raise InputError(f"{npz}: no training chains between {d.min_length} and {d.max_length} residues")
        if not early:
            raise ConfigError("config data.early_stop_chains: no validation chains for early stopping")
        if not rest:
            raise InputError(f"{npz}: no validation chains left for evaluation after {len(early)} early-stopping "
                             "chains; lower data.early_stop_chains")
        log.info("contacts: %d train chains, %d early-stopping and %d evaluation chains (validation)",
                 len(train), len(early), len(rest))
        info = {"conventions": {"contact": f"CB-CB < {d.threshold} A (CA where CB is missing)",
                                "min_separation_trained": d.min_separation},
                "data": {"npz": str(npz.resolve()), "full_sequences": full_path,
                         "train_ids": [c.id for c in train], "early_stop_ids": [c.id for c in early]},
                "caveat": REDUNDANCY_CAVEAT}
        tests = {TEST_SET: rest}
        for name, entry in d.test.items():  # structure sets of one's own: every chain
            path, fasta = _test_entry(entry)
            if fasta is not None and not Path(fasta).is_file():
                raise InputError(f"data.test.{name}: full_sequences {fasta}: no such file (a FASTA of whole sequences)")
            chains = ChainSet(load_chains(path, None, full_sequences=read_full_sequences(fasta) if fasta else None))
            chains.selection = {"set_chains": len(chains), "scored_chains": len(chains), "dropped": [],
                                "max_length": None, "sample": None,
                                "limits": f"every chain of {path}" + (f", read in the whole sequences of {fasta}"
                                                                      if fasta else "")}
            tests[name] = chains
        return TaskData(train, early, tests, info)

    def extra_test(self, config, name: str, file: str, format: str | None, options: dict, where: str) -> str:
        if name == TEST_SET:
            raise ConfigError(f"{where}: {TEST_SET} is the held-out validation chains' name; give the set another")
        if format not in (None, "npz"):
            raise ConfigError(f"{where}: a contact task reads a structure set in the npz layout (docs/contacts.md), "
                              f"format npz, not {format!r}")
        unknown = sorted(set(options) - {"full_sequences"})
        if unknown:
            raise ConfigError(f"{where}: a structure set takes one option, full_sequences=FASTA (the whole "
                              f"sequences the model reads), not {', '.join(unknown)}")
        if not Path(file).is_file():
            raise InputError(f"{where}: {file}: no such file (a structure set in the npz layout)")
        fasta = options.get("full_sequences")
        if fasta is None:
            return str(Path(file).resolve())
        if not Path(fasta).is_file():
            raise InputError(f"{where}: full_sequences {fasta}: no such file (a FASTA of whole sequences)")
        return {"file": str(Path(file).resolve()), "full_sequences": str(Path(fasta).resolve())}

    def training_files(self, config, data_dir=None) -> list[str]:
        """The structure set and the whole-sequence FASTA the chains are read from, unless they lie
        in the benchmark data folder (whose files do not change; contact heads trained on it keep
        their digests). A path that does not resolve is left to :meth:`load_data` to report."""
        try:
            files = [self.npz(config, data_dir)]
        except (InputError, ConfigError):
            return []
        if config.data.full_sequences:
            files.append(Path(config.data.full_sequences))
        shared = data_root(data_dir).resolve()
        return [str(f.resolve()) for f in files if not f.resolve().is_relative_to(shared)]

    def source_files(self, source) -> list[str]:
        path, fasta = _test_entry(source)
        return [path] if fasta is None else [path, fasta]

    def evaluation_sets(self, head, request: dict, data_dir) -> dict[str, list[Chain]]:
        """Every chain of a set, unless the request caps them (training's limits stay training's).

        Default: all validation chains not used for early stopping (``held_out_valid``), of any
        length. ``split: train``: the chains the head was trained on. ``include_early_stop``: the
        early-stopping chains too. ``max_length``: chains longer are dropped and listed (id,
        length, why). ``max_chains``: a seeded sample (the seed of the head's config; the first
        chains of the seeded order that training reported from), listed by id. What was chosen
        goes into the result as ``selection`` (metrics.json and the summary table).
        ``full_sequences``: the FASTA of whole sequences, replacing the one recorded at training.
        ``file`` (or ``--data`` naming a file without a ``split`` array): a structure set of one's
        own (docs/contacts.md), every chain scored, named after the file.
        """
        config, info = head.config, head.state
        d = config.data
        split = request.get("split") or "validation"
        if split not in ("validation", "valid", "train"):
            raise ConfigError(f"--split must be validation or train for a contact head, not {split!r}")
        max_length = request.get("max_length")
        max_chains = request.get("max_chains")
        if max_chains is not None and int(max_chains) < 1:
            raise ConfigError(f"--max-chains must be >= 1, not {max_chains}")
        if max_length is not None and int(max_length) < 1:
            raise ConfigError(f"--max-length must be >= 1, not {max_length}")
        external = request.get("file")
        if external is None:
            npz = self.npz(config, data_dir) if data_dir is not None else Path(info["data"]["npz"])
            if data_dir is None and not npz.is_file():
                npz = self.npz(config, None)
            if data_dir is not None and not _has_split(npz):
                external = npz  # --data names a structure set of one's own (no split array)
        if external is not None:
            if request.get("format"):
                raise ConfigError(f"--format {request['format']}: a contact head reads a structure set (npz, "
                                  f"see docs/contacts.md); leave --format out")
            given = request.get("full_sequences")
            if given and not Path(given).is_file():
                raise InputError(f"{FULL_SEQUENCES_OPTION} {given}: no such file (a FASTA of whole sequences)")
            pool = load_chains(external, None, full_sequences=read_full_sequences(given) if given else None)
            chains = select_chains(pool, max_length=max_length, max_chains=max_chains, seed=d.seed + 1,
                                   sampled="a seeded permutation of the set's chains")
            if not chains:
                raise InputError(f"{external}: no chains to evaluate with these limits")
            return {Path(external).stem if Path(external).suffix else Path(external).name: chains}
        full = _full_sequences(request.get("full_sequences"), info, d)
        if split == "train":
            trained = set(info["data"]["train_ids"])
            pool = [c for c in load_chains(npz, "train", full_sequences=full) if c.id in trained]
            name, exclude = "train", frozenset()
        else:
            pool = load_chains(npz, "valid", full_sequences=full)
            include = bool(request.get("include_early_stop"))
            exclude = frozenset() if include else frozenset(info["data"]["early_stop_ids"])
            name = "valid_with_early_stop" if include else TEST_SET
        how = ("the chains training reported when max_length and min_length are the config's"
               if split != "train" else "a seeded sample of the trained chains")
        chains = select_chains(pool, exclude=exclude, max_length=max_length, max_chains=max_chains, seed=d.seed + 1,
                               sampled=how)
        if not chains:
            raise InputError(f"{npz}: no {split} chains to evaluate with these limits")
        return {name: chains}

    def proteins(self, config, data_dir, split: str):
        data = self.load_data(config, data_dir)
        sets = {"train": [("train", data.train)], "valid": [("valid", data.valid)],
                "test": list(data.tests.items()), "all": [("train", data.train), ("valid", data.valid),
                                                          *data.tests.items()]}[split]
        return [(c.id, c.model_input, name) for name, chains in sets for c in chains]

    # ------------------------------------------------------------------ inputs

    def _uses_attention(self, config) -> bool:
        return get_head(config.head.type).input == "attention"

    def open_source(self, config, cache_dir, embedder=None):
        spec = parse_spec(embedder, "--embedder") if embedder is not None else config.embedder_spec
        if spec.options.seed == 0 and config.train.seed:  # random-init:FOLDER draws its weights with train.seed
            spec = spec.with_options(seed=config.train.seed)
        if self._uses_attention(config):
            return AttentionSource(spec)
        return super().open_source(config, cache_dir, spec)

    def inputs(self, config, source, chains: list[Chain], progress=None) -> ContactInputs:
        d = config.data
        if isinstance(source, SequenceSource):  # the LM trains with the head: it reads the sequences itself
            return ContactInputs(chains, None, None, d.threshold, d.min_separation, finetune=True,
                                 lm_limit=int(source.limit or 0))
        if isinstance(source, AttentionSource):
            _fit_position_limit(chains, source.lm.max_residues)
            return ContactInputs(chains, None, source.lm, d.threshold, d.min_separation)
        seqs = [c.model_input for c in chains]
        fs = source.features([c.id for c in chains], seqs, seqs, progress)
        embs = []
        for i, c in enumerate(chains):
            e = np.array(fs[i], dtype=np.float32)  # a writable copy: crops become tensors
            embs.append(e[c.offset:c.offset + len(c)] if c.full_seq is not None else e)
        return ContactInputs(chains, embs, None, d.threshold, d.min_separation)

    def query_inputs(self, config, source, ids, sequences) -> ContactInputs:
        chains = [Chain(id=pid, seq=s.translate(RARE_TO_X), ca=np.full((len(s), 3), np.nan),
                        cb=np.full((len(s), 3), np.nan)) for pid, s in zip(ids, sequences)]
        return self.inputs(config, source, chains)

    # ------------------------------------------------------------------ the head and its training

    def new_head(self, config, dim: int, info: dict) -> nn.Module:
        head = make_head(config.head, dim, [1], "pair")
        if not isinstance(head, (PairHead, FittedPairHead)):  # the declared interface, not duck typing
            raise ConfigError(f"config head.type: {config.head.type!r} builds a {type(head).__name__}; a pair head "
                              f"subclasses protlm.tasks.heads.PairHead (or FittedPairHead)")
        return head

    def fit_direct(self, config, model, train: ContactInputs, info: dict) -> dict | None:
        if train.lm is None:
            return None
        t0 = time.time()
        hp, seed = config.head, config.train.seed
        x, y = training_pairs(train.lm, train.chains, min_separation=config.data.min_separation,
                              max_pairs=hp.max_pairs, seed=seed, threshold=config.data.threshold)
        logreg = model.fit(x, y, seed=seed)
        info["training"] = {"pairs": int(len(y)), "contact_fraction": float(y.mean()), "features": int(x.shape[1]),
                            "layers": train.lm.layers, "heads": train.lm.heads,
                            "nonzero_weights": int((logreg.coef != 0).sum()), "top_maps": logreg.top_maps(train.lm),
                            "seconds": time.time() - t0}
        return {"history": []}

    def fit_state(self, config, model, train: ContactInputs, info: dict) -> FitState:
        if train.finetune:  # the input standardisation: fixed on the base LM's states of (up to 64) training chains
            with torch.no_grad():
                model.eval()
                model.head.set_stats([_lm_states(model, c, train.lm_limit).cpu().numpy()
                                      for c in train.chains[:STATS_CHAINS]])
        else:
            model.set_stats(train.embs)
        torch.manual_seed(config.train.seed)  # the training stream starts at the seed, after the head's init
        return FitState({"train": train})

    def train_batches(self, config, model, train: ContactInputs, rng):
        t = config.train
        lengths = [len(c) for c in train.chains] if train.finetune else [len(e) for e in train.embs]
        steps = _steps(_crops(len(train), lengths, t.crop, rng), t.pair_budget, t.batch_size)
        if not train.finetune:
            yield from progress_iter(steps, "epoch", unit="steps", terminal_only=True)
            return
        for step in steps:  # the engine's batch form when the LM trains: (chains, TokenBatch, mask, crop windows)
            idx = [k for k, _, _ in step]
            windows = [slice(a, b) for _, a, b in step]
            seqs = [_lm_window(train.chains[k], w, train.lm_limit) for k, w in zip(idx, windows)]
            mb = torch.zeros((len(seqs), max(len(s) for s in seqs)))
            for row, s in enumerate(seqs):
                mb[row, :len(s)] = 1.0
            yield idx, TokenBatch(seqs), mb, windows

    def _crop_loss(self, head, train: ContactInputs, k: int, a: int, b: int, emb: torch.Tensor):
        m = torch.from_numpy(np.triu(train.masks[k][a:b, a:b]))
        if not m.any():
            return None, 0
        y = torch.from_numpy(train.truth[k][0][a:b, a:b])[m].float().to(emb.device)
        logits = head.train_logits(emb, m.to(emb.device))
        return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum"), len(y)

    def batch_loss(self, config, model, step, state: FitState):
        train: ContactInputs = state["train"]
        n_pairs, losses = 0, []
        if train.finetune:  # ProteinLM's token-pair fine-tuning: the LM's states of each crop, with gradients
            idx, tokens, mb, windows = step
            states = model.residue_states(tokens)
            for row, (k, w) in enumerate(zip(idx, windows)):
                loss, n = self._crop_loss(model.head, train, k, w.start, w.stop, states[row, :w.stop - w.start])
                if loss is not None:
                    losses.append(loss)
                    n_pairs += n
        else:
            for k, a, b in step:
                loss, n = self._crop_loss(model, train, k, a, b, torch.from_numpy(train.embs[k][a:b]))
                if loss is not None:
                    losses.append(loss)
                    n_pairs += n
        if not losses:
            return None
        return torch.stack(losses).sum() / n_pairs, n_pairs

    def validation(self, config, model, valid: ContactInputs, state: FitState) -> float:
        """Mean P@L/5 long range over the early-stopping chains."""
        if valid.finetune:
            model.eval()
            with torch.no_grad():
                embs = [_lm_states(model, c, valid.lm_limit).cpu().numpy() for c in valid.chains]
            head = model.head
        else:
            embs, head = valid.embs, model
        vals = [precision_at(predict_map(head, e, config.train.pair_budget), truth[0], truth[1], rng="long",
                             divisor=5) for e, truth in zip(embs, valid.truth)]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else 0.0

    # ------------------------------------------------------------------ outputs

    def predict(self, config, model, inputs: ContactInputs, info: dict) -> list[np.ndarray]:
        """Contact probabilities (float32, L × L, symmetric) for each chain's structure stretch."""
        if inputs.lm is not None:
            reg = model.regression()
            return [reg.predict_proba(attention_features(inputs.lm, c))
                    for c in progress_iter(inputs.chains, "contact maps", unit="chains")]
        return [predict_map(model, e, config.train.pair_budget)
                for e in progress_iter(inputs.embs, "contact maps", unit="chains")]

    def score(self, config, preds, chains: list[Chain], info: dict, n_boot: int, seed: int = 0) -> dict:
        truth = [contact_map(c.ca, c.cb, config.data.threshold) for c in chains]
        res = evaluate_maps(preds, [t[0] for t in truth], [t[1] for t in truth], n_boot=n_boot, seed=seed,
                            ids=[c.id for c in chains])
        out = {**res, "chains": len(chains), "proteins": len(chains)}
        if getattr(chains, "selection", None):
            out["selection"] = chains.selection
        return {TARGET: out}

    def headline(self, result: dict) -> dict | None:
        h = result.get("headline")
        if not h:
            return None
        return {"value": h["value"], "ci95": h["ci"] or [None, None]}

    def per_protein(self, config, preds, chains, k: int):
        truth = [contact_map(c.ca, c.cb, config.data.threshold) for c in chains]
        vals = np.array([np.nan if v is None else v for v in
                         (precision_at(p, t, o, rng="long", divisor=5) for p, (t, o) in zip(preds, truth))])
        return len(vals), vals

    def per_protein_table(self, config, preds, chains, k: int):
        vals = self.per_protein(config, preds, chains, k)[1]
        return [c.id for c in chains], {"residues": [len(c) for c in chains],
                                        "p_at_l5_long": [float(v) for v in vals]}

    def statistic(self, values, idx) -> float:
        v = values[idx]
        v = v[~np.isnan(v)]
        return float(v.mean()) if len(v) else float("nan")

    def summary_lines(self, result: dict) -> list[str]:
        lines = []
        for set_name, by_target in result.items():
            for res in by_target.values():
                lines.append(f"  {set_name}: {res.get('chains')} chains; mean over proteins, "
                             f"{int(res['ci_level'] * 100)}% bootstrap CI ({res['n_boot']} resamples)")
                lines += ["    " + line for line in format_table(res).splitlines()]
                h = res["headline"]
                ci = f" [{h['ci'][0]:.3f}, {h['ci'][1]:.3f}]" if h.get("ci") else ""
                value = "—" if h["value"] is None else f"{h['value']:.3f}"
                lines.append(f"  headline: {h['name']} = {value}{ci}")
        return lines

    # ------------------------------------------------------------------ prediction files

    def check_output(self, output, overwrite: bool = False, inputs=()) -> None:

        out = Path(output)
        if out.suffix:
            raise ConfigError(f"--output {out}: a contact head writes one npz (+ png) per protein; give a folder")
        check_output_dir(out, overwrite=overwrite, inputs=list(inputs), option="--output")

    def predict_to(self, head, ids, sequences, output, options: dict, source) -> dict:
        """Contact probabilities for every protein: OUT/<id>.npz (+ OUT/<id>.png), OUT/predictions.json.

        Each npz holds ``probs`` (L × L float32, symmetric) and ``sequence``. With ``truth`` (a file
        in the contacts npz layout) proteins whose id is in it are also scored: the structure stretch
        is located in the sequence (the stored offset, checked), ``contacts`` (stretch × stretch),
        ``observed`` and ``offset`` are added to the npz, precision goes into the summary, and the
        picture compares predicted and true contacts. Proteins longer than ``max_residues`` (or the
        LM's position limit, for attention) are skipped and listed. File names come from ids through
        :func:`protlm.io.outputs.safe_names`."""

        config, model = head.config, head.model
        out_dir = Path(output)
        max_residues = int(options.get("max_residues") or 3000)
        pictures = not options.get("no_pictures")
        truth = options.get("truth")
        known = _truth_chains(Path(truth) if truth else None, ids)
        threshold = float(config.data.threshold)
        out_dir.mkdir(parents=True, exist_ok=True)
        names = safe_names(ids)
        lm = getattr(source, "lm", None)
        limit = lm.max_residues if lm is not None else None
        done, skipped, scored = [], [], []
        for pid, seq in progress_iter(list(zip(ids, sequences)), "contacts", unit="proteins"):
            seq = seq.upper()
            reason = None
            if len(seq) > max_residues:
                reason = f"longer than --max-residues {max_residues}"
            elif limit is not None and len(seq) > limit:
                reason = f"longer than the LM's position limit ({limit}); attention maps need one window"
            if reason:
                skipped.append({"id": pid, "length": len(seq), "reason": reason})
                log.warning("skipped %s (%d residues): %s", pid, len(seq), reason)
                continue
            probs = self.predict(config, model, self.query_inputs(config, source, [pid], [seq]), head.state)[0]
            arrays = {"probs": probs.astype(np.float32), "sequence": np.array(seq)}
            npz_path = out_dir / f"{names[pid]}.npz"
            entry = {"id": pid, "length": len(seq), "npz": str(npz_path)}
            t = known.get(pid)
            true_map = None
            if t is not None:
                off = locate_stretch(seq, t.seq, t.offset)
                true_map, observed = contact_map(t.ca, t.cb, threshold)
                stretch = probs[off:off + len(t), off:off + len(t)]
                arrays |= {"contacts": true_map, "observed": observed, "offset": np.array(off)}
                entry["precision"] = {r: {c: precision_at(stretch, true_map, observed, rng=r, divisor=dv)
                                          for c, dv in CUTOFFS.items()} for r in RANGES}
                entry["offset"] = off
                entry["stretch_length"] = len(t)
                scored.append(entry)
            write_npz(npz_path, arrays, compressed=True)
            if pictures:
                from protlm.tasks.contacts.plot import contact_figure

                png = out_dir / f"{names[pid]}.png"
                if true_map is not None:
                    o = entry["offset"]
                    contact_figure(probs[o:o + len(t), o:o + len(t)], true_map, png, title=pid,
                                   observed=arrays["observed"])
                else:
                    contact_figure(probs, None, png, title=pid)
                entry["png"] = str(png)
            done.append(entry)
        result = {"head": str(options.get("head", "")), "out": str(out_dir), "proteins": len(done),
                  "scored": len(scored), "skipped": skipped, "predictions": done}
        write_json(out_dir / "predictions.json", result)
        lines = [f"predicted contacts for {len(done)} proteins → {out_dir} (npz{'' if not pictures else ' + png'}); "
                 f"scored against structures: {len(scored)}; skipped: {len(skipped)}"]
        for p in done:
            if "precision" in p:
                v = p["precision"]["long"]["L/5"]
                lines.append(f"  {p['id']}: {p['length']} residues, structure stretch {p['stretch_length']} from "
                             f"offset {p['offset']}, P@L/5 long (≥24) = {'—' if v is None else f'{v:.3f}'}")
        for s in skipped:
            lines.append(f"  skipped {s['id']} ({s['length']} residues): {s['reason']}")
        return {**result, "summary": "\n".join(lines)}


#: What replaces a full-sequence FASTA that is gone (``request["full_sequences"]`` of evaluation_sets).
FULL_SEQUENCES_OPTION = "--full-sequences"


def _test_entry(entry) -> tuple[str, str | None]:
    """(structure set, FASTA of whole sequences or None) of one ``data.test`` entry."""
    if isinstance(entry, dict):
        return entry["file"], entry.get("full_sequences")
    return entry, None


def _fit_position_limit(chains: list[Chain], limit: int | None) -> None:
    """Attention maps need the whole chain in one window: a scored set (a :class:`ChainSet`) loses
    its chains over the LM's position limit in place, each listed under ``selection["dropped"]``
    with its length and why, so the numbers say what they cover; a training set with such a chain
    is refused (lower ``data.max_length``)."""
    if limit is None:
        return
    long = [c for c in chains if len(c.model_input) > limit]
    if not long:
        return
    selection = getattr(chains, "selection", None)
    if selection is None:
        raise ConfigError(f"{long[0].id}: {len(long[0].model_input)} residues, longer than the LM's position limit "
                          f"({limit}); attention maps need one window: set data.max_length <= {limit}")
    reason = f"longer than the LM's position limit ({limit}); attention maps need one window"
    for c in long:
        log.warning("not scored: %s (%d residues): %s", c.id, len(c.model_input), reason)
    selection.setdefault("dropped", []).extend({"id": c.id, "length": len(c.model_input), "reason": reason}
                                               for c in long)
    chains[:] = [c for c in chains if len(c.model_input) <= limit]
    selection["scored_chains"] = len(chains)
    if not chains:
        raise InputError(f"no chain of the set fits the LM's position limit ({limit})")


def _has_split(npz: Path) -> bool:
    try:
        with np.load(npz, allow_pickle=False) as z:
            return "split" in z.files
    except Exception:  # an unreadable file: read_structures says why
        return True


def _full_sequences(given: str | None, info: dict, d) -> dict[str, str] | None:
    """The whole sequences for evaluation: ``given`` (the request), else the FASTA recorded at
    training time (an absolute path since protlm 0.4; older heads recorded it as written)."""
    if given:
        if not Path(given).is_file():
            raise InputError(f"{FULL_SEQUENCES_OPTION} {given}: no such file (a FASTA of whole sequences)")
        return read_full_sequences(given)
    recorded = (info.get("data") or {}).get("full_sequences") or d.full_sequences
    if not recorded:
        return None
    if not Path(recorded).is_file():
        raise InputError(f"the full-sequence FASTA recorded when the head was trained, {recorded}, is gone; give it "
                         f"again with {FULL_SEQUENCES_OPTION} FASTA, or evaluate on a structure set whose seq "
                         f"holds whole sequences (see docs/contacts.md)")
    return read_full_sequences(recorded)


def _truth_chains(truth: Path | None, ids: list[str]) -> dict[str, Chain]:
    """Structures of the ids that the truth file holds (others are predicted, not scored)."""
    if truth is None:
        return {}
    npz = resolve_npz(truth)
    present = set(read_structures(npz)["ids"].tolist())
    wanted = [i for i in ids if i in present]
    return {c.id: c for c in load_chains(npz, None, ids=wanted)} if wanted else {}
