"""Embedding projections as in the ProtTrans paper (section 3.1): t-SNE and UMAP maps of
per-protein embeddings and of a model's token-embedding layer, coloured by labels.

A picture alone cannot be compared between models, so every map comes with **silhouette
scores** (scikit-learn ``silhouette_score``) of each label column, computed twice and always
named apart:

- ``embedding_cosine``: in the original D-dimensional embedding space, cosine distance — what
  the model itself encodes, independent of the projection's randomness;
- ``<method>_2d_euclidean``: on the 2-D coordinates, Euclidean distance — how well the picture
  shows it.

Both run on labelled points only (unlabelled ones are drawn grey and left out), on at most
``silhouette_sample`` points drawn with a fixed seed.

Entry points for callers (the CLI ``protlm project`` and ``protlm demo`` are thin layers):

- :func:`project` — N × D → N × 2 with the paper's parameters (:class:`ProjectionParams`);
- :func:`silhouette` — one score, unlabelled points excluded, sample cap and seed;
- :func:`project_proteins` — the whole per-protein job into a folder, returns the summary dict;
- :func:`token_embedding_matrix` / :func:`project_tokens` — the 20 amino-acid rows of a model's
  input embedding matrix, and their t-SNE map coloured by :data:`AA_GROUPS`.

Every file is written to a temporary name and renamed (no half-written PNG/HTML/CSV/JSON).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protlm.embed.store import file_attr, file_level, open_embeddings
from protlm.io.atomic import write_bytes, write_json
from protlm.errors import ConfigError, InputError

log = logging.getLogger(__name__)

METHODS = ("tsne", "umap")
METHOD_TITLES = {"tsne": "t-SNE", "umap": "UMAP"}
#: scikit-learn's TSNE runs its first 250 iterations with early exaggeration and only then the
#: optimisation proper; with max_iter 250 that phase never runs (the map is the exaggerated one and
#: kl_divergence_ stays at its initial DBL_MAX). 300 = those 250 plus 50 optimising iterations
#: (scikit-learn checks the error every 50).
TSNE_EXAGGERATION_ITER = 250
MIN_TSNE_ITER = TSNE_EXAGGERATION_ITER + 50
#: Fewest points a method can map: scikit-learn's TSNE needs 2; UMAP's spectral initialisation
#: needs more points than its 2 dimensions + 1 (with 3, scipy's eigh refuses), so 4.
MIN_POINTS = {"tsne": 2, "umap": 4}
#: Label classes drawn in their own colour; rarer ones share one "other" colour (tab20 has 20).
MAX_COLOURED_CLASSES = 20
UNLABELLED = "unlabelled"
STANDARD_AA = "ACDEFGHIKLMNPQRSTVWY"

#: Biochemical groups of the 20 standard amino acids, by side chain. The classes are those of
#: the common textbook chart of proteinogenic amino acids (e.g. Wikipedia "Amino acid",
#: table by side-chain class: hydrophobic, polar uncharged, positively / negatively charged,
#: and the "special cases" C, G, P), with the hydrophobic class split into aliphatic and
#: aromatic as in Lehninger's Principles of Biochemistry. Every letter is in exactly one group.
AA_GROUPS: dict[str, str] = {
    "hydrophobic aliphatic": "AVLIM",
    "aromatic": "FWY",
    "positive": "KRH",
    "negative": "DE",
    "polar uncharged": "STNQ",
    "special": "CGP",
}


@dataclass
class ProjectionParams:
    """Projection settings; the defaults are the paper's.

    t-SNE: perplexity 30 and 3,000 iterations (ProtTrans section 3.1), PCA initialisation (stable
    global layout and reproducible with the seed), scikit-learn's automatic learning rate.
    UMAP: n_neighbors 15, min_dist 0.1 (umap-learn's defaults, as used in the paper's UMAP
    figures). Both use Euclidean distance in the embedding space, the libraries' default.

    ``threads``: OpenMP/BLAS threads during t-SNE and the silhouettes (UMAP with a seed runs on
    one thread anyway). Default 1: on a busy machine the
    spinning OpenMP workers of scikit-learn's t-SNE lose badly to other load (60 points, 3,000
    iterations, 2 shared CPUs: 3.8 s with the default threads, 0.28 s with one); raise it on a
    machine of your own for thousands of proteins.
    """

    seed: int = 0
    perplexity: float = 30.0
    max_iter: int = 3000
    n_neighbors: int = 15
    min_dist: float = 0.1
    threads: int = 1

    def validate(self) -> None:
        if not self.perplexity > 0:
            raise ConfigError(f"--perplexity must be positive, not {self.perplexity}")
        if self.max_iter < MIN_TSNE_ITER:
            raise ConfigError(f"--iterations must be at least {MIN_TSNE_ITER}, not {self.max_iter}: t-SNE's first "
                              f"{TSNE_EXAGGERATION_ITER} iterations are early exaggeration, the map is optimised "
                              f"only after them")
        if self.n_neighbors < 2:
            raise ConfigError(f"--n-neighbors must be at least 2, not {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ConfigError(f"--min-dist must be between 0 and 1, not {self.min_dist}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {self.threads}")
        if not 0 <= self.seed < 2 ** 32:  # scikit-learn's and umap's random_state range
            raise ConfigError(f"--seed must be between 0 and {2 ** 32 - 1}, not {self.seed}")

    def for_method(self, method: str) -> dict:
        if method == "tsne":
            return {"perplexity": self.perplexity, "max_iter": self.max_iter, "init": "pca",
                    "learning_rate": "auto", "metric": "euclidean", "seed": self.seed,
                    "threads": self.threads}
        return {"n_neighbors": self.n_neighbors, "min_dist": self.min_dist, "metric": "euclidean",
                "seed": self.seed, "threads": 1}


# --------------------------------------------------------------------------- projection


def check_size(n: int, method: str, params: ProjectionParams) -> None:
    """Refuse settings the method cannot honour for ``n`` points, instead of silently changing
    them (t-SNE needs perplexity < n; UMAP needs n_neighbors < n)."""
    if method not in METHODS:
        raise ConfigError(f"unknown projection method {method!r} (choose from {', '.join(METHODS)})")
    if n < MIN_POINTS[method]:  # before the perplexity advice, which would name an impossible value
        raise InputError(f"too few proteins for a {METHOD_TITLES[method]} map: {n}; it needs at least "
                         f"{MIN_POINTS[method]}")
    if method == "tsne" and not params.perplexity < n:
        raise ConfigError(f"t-SNE perplexity {params.perplexity:g} needs more than {params.perplexity:g} "
                          f"points, got {n}; lower the perplexity (below {n}) or add proteins")
    if method == "umap" and not params.n_neighbors < n:
        raise ConfigError(f"UMAP n_neighbors {params.n_neighbors} needs more than {params.n_neighbors} "
                          f"points, got {n}; lower --n-neighbors (below {n}) or add proteins")


def check_dim(dim: int, method: str) -> None:
    """Refuse vectors a method cannot map: none of length 0, and t-SNE's PCA initialisation
    (two components) needs at least 2 dimensions."""
    if dim == 0:
        raise InputError("the embeddings are vectors of length 0 (zero-width): nothing to project")
    if method == "tsne" and dim < 2:
        raise InputError(f"t-SNE needs vectors of at least 2 dimensions (its PCA initialisation makes 2), got {dim}")


def project(embeddings: np.ndarray, method: str = "tsne", params: ProjectionParams | None = None) -> np.ndarray:
    """N × D embeddings → N × 2 coordinates (float32), deterministic for a given seed."""
    return project_with_info(embeddings, method, params)[0]


def project_with_info(embeddings: np.ndarray, method: str = "tsne", params: ProjectionParams | None = None
                      ) -> tuple[np.ndarray, dict]:
    """:func:`project`, plus what the run did that the parameters do not say: for t-SNE the
    iterations actually run (scikit-learn stops early when the error stalls for 300)."""
    params = params or ProjectionParams()
    params.validate()
    x = _as_matrix(embeddings)
    check_size(len(x), method, params)
    check_dim(x.shape[1], method)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(params.threads):
        return _fit(x, method, params)


def _fit(x: np.ndarray, method: str, params: ProjectionParams) -> tuple[np.ndarray, dict]:
    info: dict = {}
    if method == "tsne":
        from sklearn.manifold import TSNE

        model = TSNE(n_components=2, perplexity=params.perplexity, max_iter=params.max_iter, init="pca",
                     learning_rate="auto", random_state=params.seed, n_jobs=params.threads)
        coords = model.fit_transform(x)
        # n_iter_ is the index of the last iteration (0-based)
        info = {"iterations_run": int(model.n_iter_) + 1, "kl_divergence": round(float(model.kl_divergence_), 4)}
        if not float(model.kl_divergence_) < np.finfo(np.float64).max:
            # still scikit-learn's initial DBL_MAX (or NaN): the optimisation proper never ran (see
            # MIN_TSNE_ITER), so the map is not one to trust
            raise InputError(f"t-SNE stopped after {info['iterations_run']} of {params.max_iter} iterations without "
                             f"optimising the map (KL divergence {model.kl_divergence_:g}); raise --iterations")
    else:
        import umap

        model = umap.UMAP(n_components=2, n_neighbors=params.n_neighbors, min_dist=params.min_dist,
                          random_state=params.seed, n_jobs=1)
        with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": intended
            warnings.simplefilter("ignore", UserWarning)
            coords = model.fit_transform(x)
    return np.asarray(coords, dtype=np.float32), info


def _as_matrix(embeddings: np.ndarray, ids: Sequence[str] | None = None) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(f"embeddings must be an N × D matrix with N > 0, got shape {x.shape}")
    if x.shape[1] == 0:
        raise InputError("the embeddings are vectors of length 0 (zero-width): nothing to project")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        who = f" (protein {ids[bad]!r})" if ids is not None and len(ids) == len(x) else ""
        raise InputError(f"embedding row {bad}{who} holds NaN or infinite values")
    return x


# --------------------------------------------------------------------------- inputs


def _open_h5(path: str | Path):
    return open_embeddings(path, "--embeddings")


def _describe(obj) -> str:
    """What an HDF5 entry is, for a message that refuses it."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        return "a group" if isinstance(obj, h5py.Group) else "not a dataset"
    if obj.dtype.kind not in "fiu":
        return f"a dataset of {'text' if obj.dtype.kind in 'SUO' else obj.dtype} values, not numbers"
    if obj.ndim == 0:
        return "a single number, not a vector"
    return f"an array of shape {obj.shape}"


def _is_per_residue(f) -> bool:
    """The file holds per-residue (L × D) embeddings: its ``level`` says so, or, without one,
    its first entry is a numeric 2-D dataset — not whatever else is not a vector (a group, a
    scalar, text), which the per-entry check names for what it is."""
    import h5py

    if file_attr(f, "level") is not None:
        return file_level(f, f"--embeddings {f.filename}") == "residue"
    first = next(iter(f.keys()), None)
    ds = f[first] if first is not None else None
    return isinstance(ds, h5py.Dataset) and ds.ndim == 2 and ds.dtype.kind in "fiu"


def h5_index(path: str | Path) -> dict[str, str]:
    """Protein id → dataset name of a per-protein HDF5 written by ``protlm embed --level
    protein`` (README "HDF5 layout": one D-vector per protein, ``attrs["original_id"]`` = the
    FASTA id; the dataset name is the id with ``/``→``_`` or a sequence hash).

    Two datasets claiming the same ``original_id`` are refused: labels are joined by that id, so
    one of them would be dropped or given the other's label."""
    import h5py

    index: dict[str, str] = {}
    with _open_h5(path) as f:
        if _is_per_residue(f):
            raise InputError(f"{path}: holds per-residue embeddings; project the per-protein file "
                             "(protlm embed --level protein, or OUT.per_protein.h5 of --level both)")
        for key in f.keys():
            ds = f[key]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 1 or ds.dtype.kind not in "fiu":
                raise InputError(f"{path}: {key!r} is not a per-protein vector ({_describe(ds)}); use a "
                                 "per-protein embedding file")
            original = ds.attrs.get("original_id", key)
            pid = original.decode() if isinstance(original, bytes) else str(original)
            if pid in index:
                raise InputError(f"{path}: datasets {index[pid]!r} and {key!r} both claim protein {pid!r} "
                                 "(attrs[\"original_id\"]); one protein, one embedding")
            index[pid] = key
    if not index:
        raise InputError(f"{path}: holds no embeddings")
    return index


def read_h5_vectors(path: str | Path, keys: Sequence[str]) -> np.ndarray:
    """The per-protein vectors stored under ``keys``, stacked in that order (N × D float32)."""
    with _open_h5(path) as f:
        vectors = [np.asarray(f[k][()], dtype=np.float32) for k in keys]
        dims = {v.shape for v in vectors}
        if len(dims) > 1:
            raise InputError(f"{path}: vectors of different sizes {sorted(dims)}; mixed models in one file?")
        if vectors and vectors[0].size == 0:
            raise InputError(f"{path}: the vectors have length 0 (zero-width datasets): nothing to project")
        for k, v in zip(keys, vectors):
            if not np.isfinite(v).all():  # named here, where the file and the protein are known
                pid = f[k].attrs.get("original_id", k)
                pid = pid.decode() if isinstance(pid, bytes) else str(pid)
                raise InputError(f"{path}: the embedding of {pid!r} (dataset {k!r}) holds NaN or infinite values")
    return np.stack(vectors)


def read_labels(path: str | Path, id_column: str = "id") -> dict[str, dict[str, str]]:
    """A CSV or TSV (tab when the name ends in .tsv/.tab or the header has tabs and no commas)
    with an id column and label columns → column → {id: value}; empty cells are no label."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file (expected a CSV/TSV of labels)") from None
    header = text.split("\n", 1)[0]
    tab = p.suffix.lower() in (".tsv", ".tab") or ("\t" in header and "," not in header)
    reader = csv.reader(io.StringIO(text), delimiter="\t" if tab else ",")
    try:
        rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise InputError(f"{p}:{reader.line_num}: not a readable CSV/TSV file ({exc})") from None
    if not rows:
        raise InputError(f"{p}: empty; expected a header with an {id_column!r} column and label columns")
    names = [c.strip() for c in rows[0][1]]
    if id_column not in names:
        raise InputError(f"{p}: no {id_column!r} column in the header (columns: {', '.join(names)}); "
                         "name the id column with --id-column")
    if len(names) < 2:
        raise InputError(f"{p}: no label columns besides {id_column!r}")
    at = names.index(id_column)
    labels: dict[str, dict[str, str]] = {c: {} for c in names if c != id_column}
    seen: set[str] = set()
    for line, row in rows[1:]:
        if len(row) != len(names):
            raise InputError(f"{p}:{line}: {len(row)} fields, the header has {len(names)}")
        pid = row[at].strip()
        if not pid:
            raise InputError(f"{p}:{line}: empty id")
        if pid in seen:
            raise InputError(f"{p}:{line}: id {pid!r} given twice")
        seen.add(pid)
        for name, value in zip(names, row):
            if name != id_column and value.strip():
                labels[name][pid] = value.strip()
    return labels


# --------------------------------------------------------------------------- labels


def is_missing(value: object) -> bool:
    """None, empty text and NaN mean "no label" (drawn grey, left out of the silhouette)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


def _as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def label_kind(values: Sequence[object]) -> str:
    """``"continuous"`` when every label is a number and one is not a whole number (stability,
    fluorescence: colour scale, no silhouette); else ``"categorical"`` (classes, fold indices)."""
    present = [v for v in values if not is_missing(v)]
    numbers = [_as_number(v) for v in present]
    if present and all(n is not None for n in numbers) and any(not float(n).is_integer() for n in numbers):
        return "continuous"
    return "categorical"


def _class_name(value: object) -> str:
    """One spelling per class: ``3``, ``3.0`` and ``"3"`` are the same class."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def align_labels(ids: Sequence[str], labels: Mapping[str, Mapping[str, object] | Sequence[object]]
                 ) -> dict[str, list[object]]:
    """Label columns as lists aligned with ``ids`` (None where an id has no label). A column is
    either a mapping id → value or a sequence in the order of ``ids``."""
    out: dict[str, list[object]] = {}
    for column, values in labels.items():
        if isinstance(values, Mapping):
            col = [values.get(pid) for pid in ids]
        else:
            col = list(values)
            if len(col) != len(ids):
                raise InputError(f"label column {column!r} has {len(col)} values for {len(ids)} proteins")
        out[column] = [None if is_missing(v) else v for v in col]
    return out


def stratified_subsample(strata: Sequence[object], n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` of the items, proportionally stratified by ``strata`` (missing labels are
    one stratum of their own), sorted. Each item gets the key ``(rank in its stratum + u) / size
    of its stratum`` over a seeded random order within the stratum (``u`` uniform in [0, 1)); the
    ``n`` smallest keys are kept, so every class gets its share of ``n`` up to rounding. With all
    items in one stratum this is a seeded uniform random sample."""
    total = len(strata)
    if n >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    names = [UNLABELLED if is_missing(s) else _class_name(s) for s in strata]
    order = rng.permutation(total)
    sizes = Counter(names)
    seen: Counter[str] = Counter()
    key = np.empty(total)
    jitter = rng.random(total)
    for i in order:
        name = names[i]
        key[i] = (seen[name] + jitter[i]) / sizes[name]
        seen[name] += 1
    return np.sort(np.argsort(key, kind="stable")[:n])


# --------------------------------------------------------------------------- silhouette


def silhouette(embeddings: np.ndarray, labels: Sequence[object], metric: str = "cosine",
               sample: int | None = 5000, seed: int = 0) -> float | None:
    """Mean silhouette of the labelled points (unlabelled ones are left out), on at most
    ``sample`` points drawn with ``seed``. ``None`` when it is undefined: fewer than two classes,
    or not more points than classes. Range −1 … 1; about 0 means the classes overlap."""
    from sklearn.metrics import silhouette_score

    x = np.asarray(embeddings)
    keep = np.array([not is_missing(v) for v in labels], dtype=bool)
    names = np.array([_class_name(v) for v, k in zip(labels, keep) if k], dtype=object)
    x = x[keep]
    if sample is not None and len(x) > sample:
        pick = np.random.default_rng(seed).choice(len(x), size=sample, replace=False)
        x, names = x[pick], names[pick]
    k = len(set(names.tolist()))
    if k < 2 or len(x) <= k:
        return None
    return float(silhouette_score(x, names, metric=metric))


def _silhouettes(x: np.ndarray, coords: dict[str, np.ndarray], column: list[object], kind: str,
                 sample: int | None, seed: int) -> dict:
    present = [v for v in column if v is not None]
    entry: dict = {"kind": kind, "labelled": len(present), "unlabelled": len(column) - len(present)}
    if kind == "continuous":
        entry["note"] = "continuous label: no classes, no silhouette"
        return entry
    entry["classes"] = len({_class_name(v) for v in present})
    entry["embedding_cosine"] = _rounded(silhouette(x, column, "cosine", sample, seed))
    for method, xy in coords.items():
        entry[f"{method}_2d_euclidean"] = _rounded(silhouette(xy, column, "euclidean", sample, seed))
    return entry


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# --------------------------------------------------------------------------- plotting


@dataclass
class _Colouring:
    """How one label column is drawn: classes in order with colours, or a colour scale."""

    kind: str
    names: list[str]  # per point: class name, "other", or UNLABELLED (categorical)
    classes: list[str]  # coloured classes, most frequent first (+ "other …" if any)
    colours: dict[str, str]
    values: np.ndarray | None = None  # continuous values (NaN = unlabelled)


def _colouring(column: list[object], kind: str) -> _Colouring:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if kind == "continuous":
        values = np.array([np.nan if v is None else _as_number(v) for v in column], dtype=float)
        return _Colouring(kind, [], [], {}, values)
    counts = Counter(_class_name(v) for v in column if v is not None)
    ranked = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    shown, rest = ranked[:MAX_COLOURED_CLASSES], ranked[MAX_COLOURED_CLASSES:]
    palette = colormaps["tab10" if len(shown) <= 10 else "tab20"]
    colours = {c: to_hex(palette(i)) for i, c in enumerate(shown)}
    other = f"other ({len(rest)} classes)" if rest else None
    keep = set(shown)
    names = [UNLABELLED if v is None else (_class_name(v) if _class_name(v) in keep else other) for v in column]
    classes = shown + ([other] if other else [])
    if other:
        colours[other] = "#555555"
    colours[UNLABELLED] = "#c8c8c8"
    return _Colouring(kind, names, classes, colours)


def _marker_size(n: int) -> float:
    """Points shrink as there are more of them, so 20 tokens and 15,000 proteins both read."""
    return float(min(60.0, max(3.0, 16000.0 / max(n, 1))))


def plot_png(coords: np.ndarray, column: list[object], path: Path, title: str, label_name: str,
             point_text: Sequence[str] | None = None) -> Path:
    """Scatter plot of ``coords`` coloured by one label column (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = label_kind(column)
    col = _colouring(column, kind)
    fig, ax = plt.subplots(figsize=(8.5, 6.5), dpi=120)
    size = _marker_size(len(coords))
    if kind == "continuous":
        known = ~np.isnan(col.values)
        ax.scatter(coords[~known, 0], coords[~known, 1], s=size, c="#c8c8c8", label=UNLABELLED, linewidths=0)
        sc = ax.scatter(coords[known, 0], coords[known, 1], s=size, c=col.values[known], cmap="viridis",
                        linewidths=0)
        fig.colorbar(sc, ax=ax, label=label_name)
    else:
        names = np.array(col.names, dtype=object)
        for cls in [UNLABELLED] + col.classes:  # grey first, underneath
            m = names == cls
            if m.any():
                ax.scatter(coords[m, 0], coords[m, 1], s=size, c=col.colours[cls], linewidths=0,
                           label=f"{cls} ({int(m.sum())})")
        ax.legend(title=label_name, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8,
                  title_fontsize=9, frameon=False, markerscale=max(1.0, 4.0 / math.sqrt(size)))
    if point_text is not None:
        for (x, y), text in zip(coords, point_text):
            ax.annotate(text, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=11, weight="bold")
    ax.set_title(textwrap.fill(title, 80), fontsize=11)  # a long title (file name, caveat) would run off the figure
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
    return path


def _html_traces(coords: np.ndarray, ids: Sequence[str], column: list[object], label_name: str,
                 point_text: Sequence[str] | None) -> list:
    import plotly.graph_objects as go

    kind = label_kind(column)
    col = _colouring(column, kind)
    size = min(14.0, max(3.0, math.sqrt(_marker_size(len(coords))) * 1.6))
    hover = "%{customdata[0]}<br>" + label_name + ": %{customdata[1]}<extra></extra>"
    shown = ["" if v is None else _class_name(v) for v in column]
    mode = "markers+text" if point_text is not None else "markers"
    if kind == "continuous":
        idx = np.arange(len(coords))
        groups = [(label_name, idx[~np.isnan(col.values)], None), (UNLABELLED, idx[np.isnan(col.values)], "#c8c8c8")]
    else:
        names = np.array(col.names, dtype=object)
        groups = [(cls, np.flatnonzero(names == cls), col.colours[cls]) for cls in col.classes + [UNLABELLED]]
    traces = []
    for name, idx, colour in groups:
        if len(idx) == 0:
            continue
        marker = {"size": size, "color": colour}
        if colour is None:
            marker = {"size": size, "color": col.values[idx].tolist(), "colorscale": "Viridis",
                      "colorbar": {"title": {"text": label_name}}}
        traces.append(go.Scatter(
            x=coords[idx, 0].tolist(), y=coords[idx, 1].tolist(), mode=mode, name=f"{name} ({len(idx)})",
            marker=marker, customdata=[[ids[i], shown[i] or UNLABELLED] for i in idx], hovertemplate=hover,
            text=[point_text[i] for i in idx] if point_text is not None else None, textposition="top center",
            legendgroup=label_name,
        ))
    return traces


def plot_html(coords: np.ndarray, ids: Sequence[str], columns: dict[str, list[object]], path: Path,
              title: str, point_text: Sequence[str] | None = None) -> Path:
    """One interactive plotly page for one projection, with a dropdown that switches between the
    label columns (one page per method instead of per label: plotly.js, ~4.7 MB, is embedded
    once, so the page works offline). Hovering a point shows its id and label."""
    import plotly.graph_objects as go

    fig = go.Figure()
    spans: list[tuple[str, int, int]] = []
    for name, column in columns.items():
        start = len(fig.data)
        fig.add_traces(_html_traces(coords, ids, column, name, point_text))
        spans.append((name, start, len(fig.data)))
    total = len(fig.data)
    for i, trace in enumerate(fig.data):
        trace.visible = spans[0][1] <= i < spans[0][2]
    buttons = [{"label": name, "method": "update",
                "args": [{"visible": [a <= i < b for i in range(total)]}, {"title.text": f"{title} — {name}"}]}
               for name, a, b in spans]
    fig.update_layout(
        title={"text": f"{title} — {spans[0][0]}"}, template="plotly_white", width=1000, height=750,
        xaxis={"showticklabels": False}, yaxis={"showticklabels": False}, legend={"itemsizing": "constant"},
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 0.0, "xanchor": "left", "y": 1.08,
                      "yanchor": "bottom", "showactive": True}] if len(spans) > 1 else [],
    )
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    write_bytes(path, html.encode("utf-8"))
    return path


def write_coordinates(path: Path, ids: Sequence[str], coords: np.ndarray, columns: dict[str, list[object]],
                      id_header: str = "id") -> Path:
    """``id,x,y,<label columns>`` — the 2-D map as a table (empty cell = no label)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([id_header, "x", "y", *columns])
    for i, pid in enumerate(ids):
        w.writerow([pid, f"{coords[i, 0]:.6g}", f"{coords[i, 1]:.6g}",
                    *("" if columns[c][i] is None else _class_name(columns[c][i]) for c in columns)])
    write_bytes(path, buf.getvalue().encode("utf-8"))
    return path


def safe_name(text: str) -> str:
    """A label column as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "label"


# --------------------------------------------------------------------------- per-protein job


def project_proteins(
    ids: Sequence[str],
    embeddings: np.ndarray,
    labels: Mapping[str, Mapping[str, object] | Sequence[object]],
    out_dir: str | Path,
    methods: Sequence[str] = METHODS,
    params: ProjectionParams | None = None,
    *,
    silhouette_sample: int | None = 5000,
    max_proteins: int | None = None,
    title: str = "per-protein embeddings",
    extra: dict | None = None,
) -> dict:
    """The whole per-protein job: project ``embeddings`` (N × D, rows in the order of ``ids``)
    with each method, write PNG (one per method and label), HTML (one per method, a dropdown
    over labels), CSV (one per method) and ``projection.json`` into ``out_dir``; return the
    summary (the JSON's content).

    ``labels``: label column → ``{id: value}`` (ids without a value are unlabelled) or a list
    aligned with ``ids``. ``max_proteins``: keep a seeded sample, stratified by the first label
    column (:func:`stratified_subsample`). ``extra`` (source, counts, timings of the caller) is
    merged into the summary.
    """
    t_start = time.perf_counter()
    params = params or ProjectionParams()
    params.validate()
    methods = list(dict.fromkeys(methods))
    ids = [str(i) for i in ids]
    x = _as_matrix(embeddings, ids)
    if len(ids) != len(x):
        raise InputError(f"{len(ids)} ids for {len(x)} embedding rows")
    dup = next((pid for pid, c in Counter(ids).items() if c > 1), None)
    if dup is not None:
        raise InputError(f"id {dup!r} occurs more than once")
    if not labels:
        raise ConfigError("no label column to colour by")
    columns = align_labels(ids, labels)
    counts = {"given": len(ids)}
    if max_proteins is not None and max_proteins < len(ids):
        keep = stratified_subsample(columns[next(iter(columns))], max_proteins, params.seed)
        x, ids = x[keep], [ids[i] for i in keep]
        columns = {c: [v[i] for i in keep] for c, v in columns.items()}
        counts["subsampled_to"] = len(ids)
    for method in methods:
        check_size(len(x), method, params)
        check_dim(x.shape[1], method)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    coords: dict[str, np.ndarray] = {}
    run_info: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for method in methods:
        t = time.perf_counter()
        coords[method], run_info[method] = project_with_info(x, method, params)
        timings[f"{method}_s"] = round(time.perf_counter() - t, 2)
        log.info("%s of %d proteins: %.1f s", METHOD_TITLES[method], len(x), timings[f"{method}_s"])

    t = time.perf_counter()
    kinds = {c: label_kind(v) for c, v in columns.items()}
    from threadpoolctl import threadpool_limits

    with threadpool_limits(params.threads):
        scores = {c: _silhouettes(x, coords, v, kinds[c], silhouette_sample, params.seed) for c, v in columns.items()}
    timings["silhouette_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    outputs: dict[str, list[str]] = {"png": [], "html": [], "csv": []}
    for method, xy in coords.items():
        name = METHOD_TITLES[method]
        for column, values in columns.items():
            png = out / f"{method}_{safe_name(column)}.png"
            plot_png(xy, values, png, f"{name} of {title} ({len(ids):,} proteins) — {column}", column)
            outputs["png"].append(str(png))
        outputs["html"].append(str(plot_html(xy, ids, columns, out / f"{method}.html",
                                             f"{name} of {title} ({len(ids):,} proteins)")))
        outputs["csv"].append(str(write_coordinates(out / f"{method}_coordinates.csv", ids, xy, columns)))
    timings["plots_s"] = round(time.perf_counter() - t, 2)

    summary: dict = {
        "job": "proteins",
        "methods": methods,
        "counts": {**counts, "projected": len(ids), "dim": int(x.shape[1]),
                   "unlabelled": {c: sum(v is None for v in vals) for c, vals in columns.items()}},
        "parameters": {m: params.for_method(m) for m in methods},
        "runs": {m: info for m, info in run_info.items() if info},
        "silhouette_definition": _SILHOUETTE_DEFINITION,
        "silhouette_sample": silhouette_sample,
        "silhouette": scores,
        "outputs": outputs,
    }
    if max_proteins is not None:
        summary["parameters"]["max_proteins"] = max_proteins
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(summary.get(key), dict):
            summary[key] = {**value, **summary[key]}
        else:
            summary[key] = value
    timings["total_s"] = round(time.perf_counter() - t_start, 2)
    summary["timings"] = {**(extra or {}).get("timings", {}), **timings}
    summary["outputs"]["json"] = str(out / "projection.json")
    write_json(out / "projection.json", summary)
    return summary


_SILHOUETTE_DEFINITION = (
    "sklearn.metrics.silhouette_score per label column over labelled points only (at most "
    "silhouette_sample of them, drawn with the seed): embedding_cosine = in the original embedding "
    "space with cosine distance; <method>_2d_euclidean = on the 2-D projection with Euclidean distance. "
    "Range -1..1; ~0 = classes overlap, 1 = tight separate clusters."
)


# --------------------------------------------------------------------------- token embeddings


def aa_group(letter: str) -> str:
    return next(group for group, letters in AA_GROUPS.items() if letter in letters)


def token_embedding_matrix(model_path: str | Path) -> tuple[list[str], np.ndarray]:
    """The rows of the model's input embedding matrix (``get_input_embeddings().weight``) for the
    20 standard amino acids: ``(letters, 20 × D float32)``. The row of each letter is found with
    the model's own tokenizer (:func:`protlm.models.families.token_layout`), so ESM, ProtBert,
    ProtT5 and protlm's own vocabularies all work."""
    from protlm.io.resources import model_source
    from protlm.models.hf import load_hf_lm

    model = str(model_path)
    lm = load_hf_lm(model_source(model, "--token-embeddings"), what="--token-embeddings")
    layout, encoder = lm.layout, lm.model
    weight = encoder.get_input_embeddings().weight.detach().float().numpy()
    letters = list(STANDARD_AA)
    rows = layout.lut[[ord(c) for c in letters]]
    if (rows < 0).any() or (rows >= len(weight)).any():
        raise InputError(f"--token-embeddings {model}: the tokenizer's amino-acid ids do not fit the "
                         f"{len(weight)}-row embedding matrix")
    return letters, np.ascontiguousarray(weight[rows], dtype=np.float32)


def project_tokens(model_path: str | Path, out_dir: str | Path, *, perplexity: float = 5.0,
                   max_iter: int = 3000, seed: int = 0) -> dict:
    """t-SNE of the 20 amino-acid token embeddings (perplexity 5: 20 points need perplexity < 20),
    coloured by :data:`AA_GROUPS`, each point labelled with its letter. Writes
    ``tokens_tsne.png``, ``tokens_tsne.html``, ``tokens_tsne.csv`` and ``tokens.json`` into
    ``out_dir``; returns the summary, with silhouettes of the groups (cosine on the raw rows,
    Euclidean on the 2-D map)."""
    t_start = time.perf_counter()
    if not perplexity > 0:  # named as the flag that sets it, not as --perplexity
        raise ConfigError(f"--token-perplexity must be positive, not {perplexity}")
    params = ProjectionParams(seed=seed, perplexity=perplexity, max_iter=max_iter)
    params.validate()
    check_size(len(STANDARD_AA), "tsne", params)
    letters, matrix = token_embedding_matrix(model_path)
    groups = [aa_group(c) for c in letters]
    xy, info = project_with_info(matrix, "tsne", params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = Path(str(model_path)).name or str(model_path)
    title = f"t-SNE of the amino-acid token embeddings of {name} (perplexity {perplexity:g})"
    column = {"group": groups}
    outputs = {
        "png": str(plot_png(xy, groups, out / "tokens_tsne.png", title, "biochemical group", point_text=letters)),
        "html": str(plot_html(xy, letters, column, out / "tokens_tsne.html", title, point_text=letters)),
        "csv": str(write_coordinates(out / "tokens_tsne.csv", letters, xy, column, id_header="residue")),
        "json": str(out / "tokens.json"),
    }
    summary = {
        "job": "tokens",
        "model": str(model_path),
        "tokens": len(letters),
        "dim": int(matrix.shape[1]),
        "groups": AA_GROUPS,
        "parameters": {"tsne": params.for_method("tsne")},
        "runs": {"tsne": info},
        "silhouette_definition": _SILHOUETTE_DEFINITION,
        "silhouette": {"group": _silhouettes(matrix, {"tsne": xy}, groups, "categorical", None, seed)},
        "outputs": outputs,
        "timings": {"total_s": round(time.perf_counter() - t_start, 2)},
    }
    write_json(out / "tokens.json", summary)
    return summary
