"""Shipped predictors: trained heads that come with protlm, each with a model card.

A shipped predictor is a head folder written by ``protlm train`` (``head.json``,
``head.safetensors``, ``metrics.json``), copied unchanged into
``protlm/predictors/heads/<task>-<embedder>/`` (e.g. ``secondary_structure-unirep64``; the hyphen
also keeps setuptools from taking the data folder for a Python package)
with two more files: ``card.json`` (the model card as data: task, data and split, embedder and
its fingerprint, test numbers with CIs copied from ``metrics.json``, the command that trained it,
the licences, and the SHA-256 of the head's files) and ``MODEL_CARD.md`` (the same, to read).

A shipped predictor is one (task, embedder): its name is ``TASK@EMBEDDER``
(``secondary_structure@unirep1900``), and on the default embedder (:data:`DEFAULT_EMBEDDER`,
UniRep-64) the task alone (``secondary_structure``), the name it has always had. :func:`resolve`
reads either form with a short name for the task (``ss@unirep1900``, ``ss``); ``protlm predict``
without ``--tasks`` runs the default embedder's set (:func:`default_names`). The card's ``name``
is the predictor's name and its ``embedder.name`` the embedder, so the pair is read from the card.

:class:`Predictor` loads one of them (or any head folder) once and keeps it, with its embedder:
``Predictor.load("secondary_structure").predict(ids, sequences)``. Loading goes through
:func:`protlm.tasks.train.load_head` (every size checked, no pickle) and
:func:`protlm.tasks.train.check_source` (the embedder that will compute the inputs must be the one
the head was trained on: the fingerprint of its weights, not only its width), and a shipped
head's files must have the digests its card records. Predictors on one embedder share one
:class:`~protlm.tasks.features.FeatureSource` (:func:`load_many`), so a protein is embedded once
for all of them.

Most predictors are label heads (per residue or per protein). A contact predictor
(``residue_pairs_to_class``, task ``contacts``) predicts an L × L map per protein: its row holds the
top-L pairs and the top L/5 long-range pairs (:func:`contact_row`), and the whole map goes to a
callback (``predict(..., maps=…)``; ``protlm predict`` writes it as an npz), one protein at a time
so memory never holds more than one map. Proteins longer than :data:`MAX_CONTACT_RESIDUES` are
skipped with the reason. Contacts are opt-in (:data:`OPT_IN_TASKS`): they run when named, never in
the default set.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from protlm.errors import ConfigError, InputError
from protlm.io.checksums import sha256_file

if TYPE_CHECKING:
    import numpy as np

HEADS = Path(__file__).resolve().parent / "heads"
CARD_JSON, CARD_MD = "card.json", "MODEL_CARD.md"
HEAD_FILES = ("head.json", "head.safetensors", "metrics.json")

#: The embedder of the default set: its predictors are named by their task alone, and they are
#: what ``protlm predict`` runs without ``--tasks`` (the fast set; others are chosen by name).
DEFAULT_EMBEDDER = "unirep64"

#: Short names a person may type for a shipped predictor's task (``--tasks ss loc``, ``ss@unirep1900``).
ALIASES = {"ss": "secondary_structure", "q3": "secondary_structure", "q8": "secondary_structure",
           "loc": "localization", "q10": "localization", "membrane": "localization", "q2": "localization",
           "scop": "scop_class", "contact": "contacts", "cm": "contacts"}

#: The protocol of contact prediction: one L × L map per protein (:func:`contact_row`).
PAIR_PROTOCOL = "residue_pairs_to_class"
#: Protocols a predictor may have: the label protocols, and contact maps.
LABEL_PROTOCOLS = ("residue_to_class", "residue_to_value", "residues_to_class", "residues_to_value",
                   "sequence_to_class", "sequence_to_value")
PROTOCOLS = LABEL_PROTOCOLS + (PAIR_PROTOCOL,)

#: Tasks whose predictors run only when named (``--tasks contacts``), never in the default set: a
#: contact map is L² numbers (an npz per protein) and a pair head costs far more than a label head.
OPT_IN_TASKS = ("contacts",)

#: A contact predictor skips proteins longer than this (its map is L² numbers); ``protlm contacts
#: predict --head HEAD --max-residues N`` writes bigger maps.
MAX_CONTACT_RESIDUES = 3000
#: Long range, the field's headline range (P@L/5 long): |i − j| ≥ 24.
LONG_RANGE = 24

#: What a sequence may hold: the 20 amino acids, X, and the rare B/O/U/Z (given to the embedder as X).
_VALID = re.compile(r"^[ACDEFGHIKLMNPQRSTVWYXBOUZ]+$")



def predictor_name(task: str, embedder: str) -> str:
    """The name of the shipped predictor of ``task`` on ``embedder``: the task alone on the
    default embedder, else ``TASK@EMBEDDER``."""
    return task if embedder == DEFAULT_EMBEDDER else f"{task}@{embedder}"


def split_name(name: str) -> tuple[str, str]:
    """(task, embedder) of a predictor's name (``secondary_structure@unirep1900`` →
    ``("secondary_structure", "unirep1900")``; no ``@``: the default embedder)."""
    task, _, embedder = name.partition("@")
    return task, embedder or DEFAULT_EMBEDDER


def folders() -> dict[str, Path]:
    """Every shipped predictor's name and folder under ``heads/``."""
    if not HEADS.is_dir():
        return {}
    out = {}
    for p in sorted(HEADS.iterdir()):  # folders with a card (not __init__.py, __pycache__)
        if (p / CARD_JSON).is_file():
            out[json.loads((p / CARD_JSON).read_text())["name"]] = p
    return out


def folder(name: str) -> Path:
    """The head folder of a shipped predictor (name or short name)."""
    return folders()[resolve(name)]


def names(embedder: str | None = None) -> list[str]:
    """The shipped predictors' names (``TASK`` on the default embedder, ``TASK@EMBEDDER`` on
    another), every embedder's or those on ``embedder``."""
    return sorted(n for n in folders() if embedder is None or split_name(n)[1] == embedder)


def default_names() -> list[str]:
    """The default set: every predictor on :data:`DEFAULT_EMBEDDER` (``protlm predict`` without
    ``--tasks``) but the opt-in ones (:data:`OPT_IN_TASKS`: contacts)."""
    return [n for n in names(DEFAULT_EMBEDDER) if split_name(n)[0] not in OPT_IN_TASKS]


def embedders() -> dict[str, list[str]]:
    """Each embedder with shipped predictors: the tasks it has them for (the default embedder first)."""
    out: dict[str, list[str]] = {}
    for n in names():
        task, emb = split_name(n)
        out.setdefault(emb, []).append(task)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] != DEFAULT_EMBEDDER, kv[0])))


def _parse(name: str) -> tuple[str, str]:
    """(task, embedder) of what a person typed: short names for the task, loose spelling of a shipped
    embedder (``UniRep-1900``), no ``@``: the default embedder."""
    task, _, embedder = name.strip().lower().partition("@")
    task = task.strip().replace("-", "_")
    task = ALIASES.get(task, task)
    embedder = embedder.strip() or DEFAULT_EMBEDDER
    loose = {e.replace("-", "").replace("_", ""): e for e in embedders()}
    return task, loose.get(embedder.replace("-", "").replace("_", ""), embedder)


def not_shipped(name: str) -> str:
    """Why ``name`` is no shipped predictor, and what is: the message of one error line."""
    task, embedder = _parse(name)
    on = [e for e, tasks in embedders().items() if task in tasks]
    why = f"{task} is shipped on {', '.join(on)} (not {embedder})" if on else "no such predictor"
    return (f"{why}; shipped: {', '.join(names())} (TASK@EMBEDDER; without @: {DEFAULT_EMBEDDER}; short names "
            f"for TASK: {', '.join(sorted(ALIASES))})")


def resolve(name: str) -> str:
    """A shipped predictor's name from ``TASK`` or ``TASK@EMBEDDER``, the task by its name or a
    short name (``ss@unirep1900``); one error line listing what is shipped otherwise."""
    key = predictor_name(*_parse(name))
    if key not in names():
        raise ConfigError(f"--tasks {name}: {not_shipped(name)}")
    return key


def card(name: str) -> dict:
    """The model card (``card.json``) of a shipped predictor."""
    return json.loads((folder(name) / CARD_JSON).read_text())


def available() -> dict[str, dict]:
    """Every shipped predictor's name with its model card (``card["embedder"]["name"]``: its embedder)."""
    return {n: card(n) for n in names()}


def check_card(where: Path, info: dict) -> None:
    """A shipped head's files are the ones its card describes (digests), and the card names the
    embedder the head records."""
    from protlm.tasks.headfile import check_card_files, read_head_json

    check_card_files(where, info)
    head = read_head_json(where, "head.json")  # a mapping, or one clear line
    ident = head.get("embedder_identity") or {}
    if not isinstance(ident, dict) or not isinstance(info.get("embedder", {}), dict):
        raise InputError(f"predictor {where.name}: head.json's embedder_identity or the card's embedder is not an "
                         f"object")
    if "name" in info and split_name(info["name"])[1] != ident.get("model"):
        raise InputError(f"predictor {where.name}: its model card names it {info['name']!r}, but head.json was "
                         f"trained on {ident.get('model')!r} (a predictor's name is TASK@EMBEDDER)")
    trained = ident.get("fingerprint")
    if trained != info.get("embedder", {}).get("fingerprint"):
        raise InputError(f"predictor {where.name}: head.json records embedder fingerprint {trained!r}, its model "
                         f"card {info.get('embedder', {}).get('fingerprint')!r}")


def clean_sequences(ids: list[str], sequences: list[str]) -> list[str]:
    """Sequences upper-cased and checked (one error line for an empty one or a foreign letter)."""
    if len(ids) != len(sequences):
        raise InputError(f"{len(ids)} ids but {len(sequences)} sequences")
    out = []
    for pid, seq in zip(ids, sequences):
        s = "".join(str(seq).split()).upper().rstrip("*")
        if not s:
            raise InputError(f"protein {pid!r}: empty sequence")
        if not _VALID.match(s):
            bad = sorted(set(s) - set("ACDEFGHIKLMNPQRSTVWYXBOUZ"))
            raise InputError(f"protein {pid!r}: not a protein sequence (characters {''.join(bad)!r})")
        out.append(s)
    return out


class Predictor:
    """One trained head, loaded once and kept with its embedder (a server holds one of these).

    ``Predictor.load(name)``: a shipped predictor by name or short name (``ss``,
    ``ss@unirep1900``; :func:`available`), or a head
    folder written by ``protlm train``. ``predict(ids, sequences)``: one dict per protein:
    ``{"id", "length", "predictor", "embedder", "targets": {target: row}}``, where a row is what
    ``protlm predict --head`` writes for that target (``prediction`` and ``confidence`` per
    residue, ``prediction``/``probability``/``probabilities`` per protein, or ``value``), and a
    per-residue class target also gets ``classes`` and ``probabilities`` (L × C, rounded to 4
    decimals). A contact predictor's one target, ``contacts``, is :func:`contact_row` (top pairs,
    1-based), or ``{"skipped": reason}`` for a protein over :data:`MAX_CONTACT_RESIDUES`.
    """

    def __init__(self, name: str, head, folder: Path, card: dict | None, source, own_source: bool):
        self.name, self.head, self.folder, self.card = name, head, folder, card
        self.source = source
        self._own_source = own_source

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, name: str | Path, *, cache_dir=None, embedder: str | None = None, source=None) -> "Predictor":
        """``name``: a shipped predictor (name or alias) or a head folder. ``embedder``: another
        embedder spec for the head (refused unless it is the same model); ``source``: a
        :class:`~protlm.tasks.features.FeatureSource` to share with other predictors."""
        from protlm.tasks.train import check_source, load_head

        where = Path(name)
        info = None
        if (where / "head.json").is_file():
            pname = where.name
            if (where / CARD_JSON).is_file():
                from protlm.tasks.headfile import read_card

                info = read_card(where)
                pname = info.get("name", pname)
                check_card(where, info)
        else:
            pname = resolve(str(name))
            where = folder(pname)
            info = json.loads((where / CARD_JSON).read_text())
            check_card(where, info)
        head = load_head(where)
        if head.config.protocol not in PROTOCOLS:
            raise ConfigError(f"predictor {pname}: a {head.config.protocol} head; predictors are per-residue or "
                              f"per-protein label heads, or contact heads ({PAIR_PROTOCOL})")
        own = source is None
        if own:
            source = head.protocol.open_source(head.config, cache_dir, embedder)
        try:
            check_source(head, source)  # the embedder's fingerprint against the head's record
        except BaseException:
            if own:
                source.close()
            raise
        return cls(pname, head, where, info, source, own)

    @property
    def identity(self) -> str:
        """The predictor's name, its weights' digest and its embedder's fingerprint."""
        weights = (self.card or {}).get("files", {}).get("head.safetensors") or sha256_file(
            self.folder / "head.safetensors")
        fp = (self.head.info.get("embedder_identity") or {}).get("fingerprint")
        return f"{self.name}@{weights[:16]}|{fp}"

    @property
    def embedder(self) -> str | None:
        """The embedder the head was trained on (``unirep64``, ``unirep1900``, …), as head.json records it."""
        return (self.head.info.get("embedder_identity") or {}).get("model")

    @property
    def targets(self) -> list[str]:
        return [t.name for t in self.head.config.targets]

    @property
    def output_level(self) -> str:
        return self.head.protocol.output_level

    @property
    def pairs(self) -> bool:
        """A contact predictor (one L × L map per protein)."""
        return self.head.config.protocol == PAIR_PROTOCOL

    @property
    def needs_residues(self) -> bool:
        """Reads per-residue embeddings (per-residue and contact heads; a per-protein head reads their mean)."""
        return self.pairs or self.head.protocol.needs_residues(self.head.config)

    def close(self) -> None:
        if self._own_source and self.source is not None:
            self.source.close()
        self.source = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ predicting

    def predict(self, ids: list[str], sequences: list[str],
                maps: Callable[[str, str, "np.ndarray"], dict | None] | None = None) -> list[dict]:
        """One dict per protein, in input order (see the class docstring). ``maps``: for a contact
        predictor, called with (id, sequence, L × L float32 probabilities) for each protein it
        predicts, one at a time (the map is dropped after); what it returns is added to the
        protein's row (``protlm predict``: ``{"map": "contacts/<id>.npz"}``)."""
        import numpy as np

        if self.source is None:
            raise InputError(f"predictor {self.name}: closed")
        ids = [str(i) for i in ids]
        sequences = clean_sequences(ids, list(sequences))
        if not ids:
            return []
        if self.pairs:
            return self._predict_pairs(ids, sequences, maps)
        head, protocol = self.head, self.head.protocol
        preds = protocol.predict(head.config, head.model, protocol.query_inputs(head.config, self.source, ids,
                                                                                 sequences), head.state)
        rows = protocol.prediction_rows(head, ids, sequences, preds)  # what protlm predict --head writes
        targets = head.config.targets
        out = []
        for i, (pid, seq) in enumerate(zip(ids, sequences)):
            res = {"id": pid, "length": len(seq), "predictor": self.name, "embedder": self.embedder, "targets": {}}
            for k, tg in enumerate(targets):
                row = {key: v for key, v in rows[i * len(targets) + k].items() if key not in ("id", "target")}
                p = preds[k][i]
                if protocol.output_level == "residue" and isinstance(p, np.ndarray) and p.ndim == 2:
                    row["classes"] = list(head.state["classes"][k])
                    row["probabilities"] = np.round(p.astype(np.float64), 4).tolist()
                res["targets"][tg.name] = row
            out.append(res)
        return out

    def _where(self) -> str:
        """The head folder as a person can find it: inside the installed package for a shipped one."""
        try:
            inside = self.folder.resolve().relative_to(HEADS.resolve()).as_posix()
            return f"the folder protlm/predictors/heads/{inside} of the installed protlm"
        except ValueError:
            return str(self.folder)

    def _predict_pairs(self, ids: list[str], sequences: list[str], maps) -> list[dict]:
        """Contact maps one protein at a time (:func:`contact_row` of each)."""
        from protlm.tasks.data import RARE_TO_X
        from protlm.tasks.features import FeatureSource

        head, protocol = self.head, self.head.protocol
        min_sep = int(head.config.data.min_separation)
        (target,) = self.targets
        todo = [k for k, s in enumerate(sequences) if len(s) <= MAX_CONTACT_RESIDUES]
        if len(todo) > 1 and isinstance(self.source, FeatureSource):
            # one batched embedding pass into the feature cache (lazy: nothing is kept); each map
            # below then reads its protein's embedding back
            self.source.features([ids[k] for k in todo], [sequences[k].translate(RARE_TO_X) for k in todo])
        out = []
        for pid, seq in zip(ids, sequences):
            res = {"id": pid, "length": len(seq), "predictor": self.name, "embedder": self.embedder}
            if len(seq) > MAX_CONTACT_RESIDUES:
                row = {"skipped": f"{len(seq):,} residues: longer than {MAX_CONTACT_RESIDUES:,}, the limit of a "
                                  f"contact predictor here (a map is L² numbers); protlm contacts predict --head HEAD "
                                  f"--max-residues N writes bigger maps (HEAD: {self._where()})"}
            else:
                probs = protocol.predict(head.config, head.model,
                                         protocol.query_inputs(head.config, self.source, [pid], [seq]), head.state)[0]
                row = contact_row(probs, min_sep)
                if maps is not None:
                    row.update(maps(pid, seq, probs) or {})
                del probs
            res["targets"] = {target: row}
            out.append(res)
        return out


def _top_pairs(probs, lo: int, k: int) -> list[list]:
    """The ``k`` pairs i < j with j − i ≥ ``lo`` of highest probability, as ``[i, j, p]`` (1-based,
    p to 4 decimals), highest first; ties in (i, j) order (as :func:`~protlm.tasks.contacts.metrics.precision_at`
    ranks them)."""
    import numpy as np

    n = probs.shape[0]
    i, j = np.triu_indices(n, k=lo)
    if len(i) == 0 or k < 1:
        return []
    scores = np.asarray(probs, dtype=np.float32)[i, j]
    k = min(k, len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th highest
    cand = np.flatnonzero(scores >= kth)  # every pair tied with it too, in (i, j) order
    top = cand[np.argsort(-scores[cand], kind="stable")[:k]]
    return [[int(i[t]) + 1, int(j[t]) + 1, round(float(scores[t]), 4)] for t in top]


def contact_row(probs, min_separation: int) -> dict:
    """What a contact predictor reports of one L × L probability map: ``min_separation``, ``top``
    (the top-L pairs with |i − j| ≥ min_separation) and ``long_range_top_l5`` (the top L/5 pairs with
    |i − j| ≥ 24, the range of the field's headline P@L/5 long), each as ``[i, j, p]``, 1-based,
    highest p first."""
    n = int(probs.shape[0])
    return {"min_separation": int(min_separation), "top": _top_pairs(probs, max(1, int(min_separation)), n),
            "long_range_top_l5": _top_pairs(probs, LONG_RANGE, max(1, n // 5))}


def load_many(names_: list[str], *, cache_dir=None) -> list[Predictor]:
    """Shipped predictors, one :class:`FeatureSource` per embedder shared by all on it (a protein
    is embedded once for every task on that embedder)."""
    from protlm.tasks.train import load_head

    sources: dict[str, object] = {}
    out: list[Predictor] = []
    try:
        for n in names_:
            pname = resolve(n)
            head = load_head(folder(pname))
            spec = head.config.embedder_spec
            key = repr(spec)
            if key not in sources:
                sources[key] = head.protocol.open_source(head.config, cache_dir)
            out.append(Predictor.load(pname, source=sources[key]))
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    for p in out:
        p._sources = list(sources.values())  # noqa: SLF001 — closed by close_all
    return out


def close_all(predictors: list[Predictor]) -> None:
    seen = set()
    for p in predictors:
        for s in getattr(p, "_sources", []):
            if id(s) not in seen:
                seen.add(id(s))
                s.close()
        p.close()
