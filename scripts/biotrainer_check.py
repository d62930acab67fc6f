"""Does biotrainer embed a protlm checkpoint the way ``protlm embed`` does?

    .venv/bin/python scripts/biotrainer_check.py CHECKPOINT FASTA [--biotrainer-python PY] [--json]

Runs ``protlm embed --level residue`` here, and biotrainer's own embedding step
(``get_embedding_service(CHECKPOINT).compute_embeddings(FASTA, residue_to_class)``, the step
``biotrainer train`` runs) in a separate Python environment with biotrainer installed, then
compares the per-residue embeddings protein by protein: rows, max |diff| and cosine per residue.

The biotrainer environment is not part of protlm's install (biotrainer 2.x needs Python ≥ 3.12
and pins transformers < 5.20); docs/interop.md says how to make one. Its interpreter is
``--biotrainer-python``, else ``$PROTLM_BIOTRAINER_PYTHON``, else ``../bt-venv/bin/python`` next
to this checkout.

biotrainer 2.1.1 keeps the ``<cls>``/``<eos>`` and padding rows of an ``EsmTokenizer`` folder
(docs/interop.md); where it returns more rows than residues, the residue rows (from row 1) are
compared and the extra rows reported. biotrainer also maps U/Z/O/B to X before tokenising;
ESM-vocabulary models embed those residues as themselves in protlm, so proteins with them differ
there by design (reported as ``rare_residues``).

Exit status: 0 when every protein has exactly its residues' rows and max |diff| ≤ --atol;
1 when biotrainer loaded another model class, failed, returned extra rows, or differs; 2 on bad
input.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = REPO.parent / "bt-venv" / "bin" / "python"

#: The class biotrainer must load for each model_type for its embeddings to be the checkpoint's.
EXPECTED_CLASS = {"esm": "EsmModel", "t5": "T5EncoderModel"}

BIOTRAINER_EMBED = r"""
import json, logging, sys
from pathlib import Path
import torch
logging.disable(logging.WARNING)
from biotrainer.embedding.services.embedding_service_factory import get_embedding_service
from biotrainer_core.data_classes import Protocol
import biotrainer, transformers
folder, fasta, out = sys.argv[1:4]
Path(out).mkdir(parents=True, exist_ok=True)
service = get_embedding_service(embedder_name=folder, custom_tokenizer_config=None, device=torch.device("cpu"))
embedder = service._embedder
path = service.compute_embeddings(fasta, output_dir=Path(out), protocol=Protocol.residue_to_class,
                                  force_output_dir=True, force_recomputing=True, store_by_hash=False)
from importlib.metadata import version
print(json.dumps({"h5": str(path), "model_class": type(embedder._model).__name__,
                  "tokenizer_class": type(embedder._tokenizer).__name__,
                  "biotrainer": version("biotrainer"), "transformers": transformers.__version__}))
"""


def biotrainer_python(arg: str | None) -> Path:
    return Path(arg or os.environ.get("PROTLM_BIOTRAINER_PYTHON") or DEFAULT_PYTHON)


def run_biotrainer(python: Path, folder: Path, fasta: Path, work: Path) -> dict:
    env = {**os.environ, "TRANSFORMERS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(python), "-c", BIOTRAINER_EMBED, str(folder), str(fasta), str(work / "bt")],
                       capture_output=True, text=True, env=env, cwd=str(work))
    if r.returncode != 0:
        lines = [ln.strip() for ln in r.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b", ln)]
        last = errors or lines
        return {"error": last[-1][:300] if last else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare(ours: dict, theirs: dict, sequences: dict) -> dict:
    import numpy as np

    per = {}
    for pid, a in ours.items():
        b = theirs.get(pid)
        if b is None:
            per[pid] = {"missing": True}
            continue
        L = a.shape[0]
        extra = b.shape[0] - L
        # biotrainer kept the special rows: <cls> first, then the residues, then <eos> and padding
        rows = b if extra == 0 else (b[1:L + 1] if extra > 0 else None)
        if rows is None or rows.shape != a.shape:
            per[pid] = {"residues": L, "rows": int(b.shape[0]), "extra_rows": int(extra), "comparable": False}
            continue
        a64, b64 = a.astype(np.float64), rows.astype(np.float64)
        cos = (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1) + 1e-30)
        per[pid] = {"residues": L, "rows": int(b.shape[0]), "extra_rows": int(extra),
                    "max_abs_diff": float(np.abs(a64 - b64).max()), "min_cosine": float(cos.min()),
                    "mean_cosine": float(cos.mean()),
                    "rare_residues": int(sum(sequences[pid].count(c) for c in "UZOB"))}
    return per


def read_h5(path: Path) -> dict:
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        out = {}
        for key in f:
            name = f[key].attrs.get("original_id", key)
            out[str(name)] = np.asarray(f[key])
        return out


def check(folder: Path, fasta: Path, python: Path, atol: float = 1e-4) -> dict:
    from protlm.cli.main import main as protlm_main
    from protlm.data.fasta import read_fasta_raw
    from protlm.errors import InputError

    if not python.exists():
        raise InputError(f"--biotrainer-python {python}: no such interpreter (make the biotrainer venv, "
                         f"docs/interop.md, or set PROTLM_BIOTRAINER_PYTHON)")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a model folder (no config.json)")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    sequences = {r.id: r.sequence for r in read_fasta_raw(fasta)}
    with tempfile.TemporaryDirectory(prefix="biotrainer_check_") as tmp:
        work = Path(tmp)
        code = protlm_main(["embed", "--model", str(folder), "--input", str(fasta), "--out",
                            str(work / "protlm.h5"), "--level", "residue", "--key", "id"])
        if code != 0:
            raise InputError(f"protlm embed failed on {folder} (exit {code})")
        ours = read_h5(work / "protlm.h5")
        bt = run_biotrainer(python, folder.resolve(), fasta.resolve(), work)
        result = {"checkpoint": str(folder), "model_type": model_type, "fasta": str(fasta),
                  "expected_class": EXPECTED_CLASS.get(model_type), **bt}
        if "error" in bt:
            result["equal"] = False
            return result
        theirs = read_h5(Path(bt["h5"]))
    result.pop("h5", None)
    per = compare(ours, theirs, sequences)
    comparable = [v for v in per.values() if "max_abs_diff" in v]
    plain = [v for v in comparable if v["rare_residues"] == 0]
    result.update({
        "proteins": len(ours),
        "extra_rows": sorted({v.get("extra_rows", 0) for v in per.values()}),
        "max_abs_diff": max((v["max_abs_diff"] for v in plain), default=None),
        "min_cosine": min((v["min_cosine"] for v in plain), default=None),
        "proteins_with_rare_residues": len(comparable) - len(plain),
        "per_protein": per,
    })
    result["right_class"] = bt["model_class"] == EXPECTED_CLASS.get(model_type)
    result["residue_rows_equal"] = (result["right_class"] and len(comparable) == len(per)
                                    and result["max_abs_diff"] is not None and result["max_abs_diff"] <= atol)
    result["equal"] = result["residue_rows_equal"] and result["extra_rows"] == [0]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="protlm checkpoint folder (config.json, model.safetensors, tokenizer)")
    p.add_argument("fasta", type=Path, help="proteins to embed")
    p.add_argument("--biotrainer-python", help=f"python of a venv with biotrainer (default $PROTLM_BIOTRAINER_PYTHON "
                                               f"or {DEFAULT_PYTHON})")
    p.add_argument("--atol", type=float, default=1e-4, help="max |diff| counted as equal (default 1e-4)")
    p.add_argument("--json", action="store_true", help="print the whole result (per protein) as JSON")
    args = p.parse_args(argv)
    from protlm.errors import ProtlmError

    try:
        result = check(args.checkpoint, args.fasta, biotrainer_python(args.biotrainer_python), args.atol)
    except ProtlmError as exc:
        print(f"biotrainer_check: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        short = {k: v for k, v in result.items() if k != "per_protein"}
        print(json.dumps(short, indent=2))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
