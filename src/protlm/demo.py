"""``protlm demo``: the papers' story at small scale on real sequences, offline, on a CPU.

1. **Data**: statistics of a real proteome and its tokenised pretraining shards. Default input:
   the bacterial proteome that ships inside the pyhmmer wheel (a dependency of protlm):
   ``pyhmmer/tests/data/seqs/938293.PRJEB85.HG003687.faa``; with ``--data DIR`` the 20k
   Swiss-Prot sample of the protlm benchmark data folder, and a summary of every benchmark set.
2. **Pretraining**: a tiny ESM-style LM for a few steps on those shards (to show the loop:
   loss, validation perplexity, a Hugging Face checkpoint).
3. **Embedding**: per-protein embeddings with the project's committed checkpoint
   (``checkpoints/protlm-swissprot-masked-xs``, pretrained on Swiss-Prot on a CPU), to HDF5.
4. **Projection**: t-SNE and UMAP maps of those embeddings with silhouettes — coloured by SCOP
   class with ``--data``, else by sequence-derived properties (the proteome carries no
   annotation) — and the t-SNE of the checkpoint's amino-acid token embeddings.
5. **Supervised heads** (with ``--data``): secondary structure (Q3/Q8, CNN) and localization
   (Q10/Q2, FFN) trained on the checkpoint's embeddings and on one-hot, scored on CB513/NEW364
   and the DeepLoc hold-out with bootstrap CIs, ending with a results table. Training sets are
   capped (``--max-train``) so that the whole demo stays within about 15 minutes on 2 cores.
"""

from __future__ import annotations

import json
import logging
import shutil
from importlib import resources
from pathlib import Path

from protlm.data.prepare import PrepareOptions, prepare
from protlm.data.stats import fasta_statistics
from protlm.errors import InputError
from protlm.io.atomic import write_json
from protlm.io.resources import bundled

log = logging.getLogger(__name__)

PYHMMER_PROTEOME = ("pyhmmer", "tests/data/seqs/938293.PRJEB85.HG003687.faa")
SWISSPROT_20K = "pretraining/swissprot_2014_01_go_annotated.random20k_seed0.fasta"
#: The demo's report, written into ``out`` at the end (the dict :func:`run_demo` returns, as JSON).
REPORT_NAME = "demo_report.json"


def embedded_proteome() -> Path:
    """Path of the proteome shipped in the pyhmmer wheel."""
    package, rel = PYHMMER_PROTEOME
    try:
        path = Path(str(resources.files(package).joinpath(rel)))
    except ModuleNotFoundError:
        raise InputError("pyhmmer is not installed; run `make install` (or pip install pyhmmer)") from None
    if not path.is_file():
        raise InputError(f"{path}: the pyhmmer wheel does not carry its test proteome")
    return path


CHECKPOINT = ("checkpoints", "protlm-swissprot-masked-xs")


def run_demo(out: str | Path, data: str | Path | None = None, workers: int = 1, progress=None, *,
             pretrain_steps: int = 40, max_proteins: int = 1000, max_train: int = 2000, stage=None) -> dict:
    """Run the demo into ``out``; ``stage(name)`` is called as each step starts. The report it returns
    is also written to ``out/demo_report.json`` (:data:`REPORT_NAME`, atomically)."""
    stage = stage or (lambda name: None)
    out = Path(out)
    checkpoint = bundled(*CHECKPOINT)
    report: dict = {"out": str(out)}
    if data is not None:
        data = Path(data)
        if not data.is_dir():
            raise InputError(f"{data}: no such folder (--data should point at the protlm benchmark data)")
        fasta = data / SWISSPROT_20K
        if not fasta.is_file():
            raise InputError(f"{fasta}: no such file (is --data the protlm benchmark data folder?)")
        from protlm.data.benchmarks import BENCHMARKS, load_benchmark, summarize

        summaries = {}
        for name in BENCHMARKS:
            try:
                summaries[name] = summarize(load_benchmark(name, data))
            except InputError as exc:
                log.warning("benchmark set %s not loaded: %s", name, exc)
        report["benchmarks"] = summaries
        report["source"] = "protlm benchmark data: Swiss-Prot 2014_01, random 20k sample"
    else:
        fasta = embedded_proteome()
        report["source"] = "pyhmmer's bundled proteome 938293.PRJEB85.HG003687 (real bacterial proteins)"
    report["input"] = str(fasta)
    stage("statistics and pretraining shards")
    report["statistics"] = fasta_statistics(fasta)
    manifest = prepare(
        fasta, out / "shards", PrepareOptions(valid_fraction=0.05), workers=workers, progress=progress
    )
    report["shards"] = {
        "manifest": str(out / "shards" / "manifest.json"),
        "train": {k: manifest["splits"]["train"][k] for k in ("records", "residues")},
        "valid": {k: manifest["splits"]["valid"][k] for k in ("records", "residues")},
        "distinct_sequences": manifest["counts"]["distinct_sequences"],
    }
    stage(f"pretraining a tiny LM for {pretrain_steps} steps")
    report["pretrain"] = _pretrain(out, pretrain_steps)
    lms = [str(checkpoint)]
    unirep = _published_lm()
    report["language_models"] = {str(checkpoint): "protlm's committed checkpoint (0.35M parameters, CPU-pretrained)"}
    if unirep["available"]:
        lms.append(DEMO_UNIREP)
        report["language_models"][DEMO_UNIREP] = unirep["what"]
    else:
        report["language_models_missing"] = {DEMO_UNIREP: unirep["why"]}
        log.warning("%s not run: %s", DEMO_UNIREP, unirep["why"])
    stage(f"embedding with {' and '.join(Path(m).name for m in lms)}, projections")
    report["projection"] = _embed_and_project(out, fasta, data, checkpoint, max_proteins)
    if unirep["available"]:
        report["projection_unirep"] = _embed_and_project(out, fasta, data, checkpoint, max_proteins,
                                                         model=DEMO_UNIREP)
    if data is not None:
        stage("supervised heads: secondary structure and localization vs one-hot")
        report["heads"] = _heads(out, data, lms, max_train)
    write_json(out / REPORT_NAME, report)
    return report


#: The published LM the demo runs beside protlm's own checkpoint (the smallest UniRep: it fits the
#: demo's time on 2 CPU cores; docs/unirep.md has the bigger ones).
DEMO_UNIREP = "unirep64"


def _published_lm() -> dict:
    """Whether UniRep's published weights are installed (the Makefile installs them)."""
    from protlm.models.unirep_weights import find_npz

    try:
        find_npz(64)
    except InputError as exc:
        return {"available": False, "why": str(exc)}
    return {"available": True, "what": "UniRep-64 (Alley et al. 2019), published weights trained on UniRef50"}


def _pretrain(out: Path, steps: int) -> dict:
    from protlm.pretrain.config import load_config
    from protlm.pretrain.trainer import pretrain

    config = load_config(data={
        "model": {"arch": "esm", "preset": "tiny"},
        "data": {"shards": str(out / "shards"), "valid_sequences": 64},
        "optimizer": {"name": "adamw", "lr": 0.003, "warmup_steps": max(1, steps // 10)},
        "train": {"phases": [{"steps": steps, "max_length": 128, "tokens_per_batch": 4096}],
                  "log_every": max(1, steps // 4), "eval_every": steps, "save_every": steps},
    })
    run_dir = out / "pretrain"
    resume = (run_dir / "checkpoints").is_dir()  # a rerun continues (or finds it finished)
    if not resume and run_dir.exists():  # killed before its first checkpoint: the demo's own folder starts over
        shutil.rmtree(run_dir)
    result = pretrain(config, run_dir, resume=resume, progress=False)
    losses = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_losses = [m["loss"] for m in losses if "loss" in m]
    ev = result.get("last_eval") or {}
    return {"steps": result["steps"], "parameters": result["params"]["total"], "tokens": result["tokens_seen"],
            "first_loss": train_losses[0] if train_losses else None,
            "last_loss": train_losses[-1] if train_losses else None,
            "val_ppl": ev.get("val_ppl"), "model": result["model"]}


def _sequence_properties(seqs: list[str]) -> dict[str, list[str]]:
    """Labels computable from sequence alone: length quartile and net charge sign."""
    import numpy as np

    lengths = np.array([len(s) for s in seqs])
    q = np.quantile(lengths, [0.25, 0.5, 0.75])
    names = [f"Q1 (<{q[0]:.0f})", f"Q2 ({q[0]:.0f}-{q[1]:.0f})", f"Q3 ({q[1]:.0f}-{q[2]:.0f})", f"Q4 (>{q[2]:.0f})"]
    quart = [names[int(np.searchsorted(q, n, side="right"))] for n in lengths]
    charge = []
    for s in seqs:
        net = sum(c in "KR" for c in s) - sum(c in "DE" for c in s)
        charge.append("positive" if net > 0 else "negative" if net < 0 else "neutral")
    return {"length_quartile": quart, "net_charge": charge}


def _embed_and_project(out: Path, fasta: Path, data: Path | None, checkpoint: Path, max_proteins: int,
                       model: str | None = None) -> dict:
    """Embed the sample with ``model`` (default: the checkpoint) and draw its maps; the token map
    is drawn for the checkpoint (an HF model with an input embedding table)."""
    import numpy as np

    from protlm.analysis.projection import project_proteins, project_tokens, stratified_subsample
    from protlm.data.alphabet import CleaningPolicy
    from protlm.data.fasta import read_fasta
    from protlm.embed.runner import load_embedder

    if data is not None:
        from protlm.data.benchmarks import load_benchmark

        records = load_benchmark("scop", data)
        keep = stratified_subsample([r.labels["scop_class"] for r in records], max_proteins, 0)
        records = [records[i] for i in sorted(keep)]
        ids, seqs = [r.id for r in records], [r.sequence for r in records]
        labels = {"scop_class": [r.labels["scop_class"] for r in records]}
        what = "SCOP classes (stratified sample of scop.train.csv)"  # the plots add the protein count
        source = f"SCOP classes, {len(ids):,} proteins (stratified sample of scop.train.csv)"
    else:
        records = list(read_fasta(fasta, CleaningPolicy()))
        rng = np.random.default_rng(0)
        keep = sorted(rng.choice(len(records), min(max_proteins, len(records)), replace=False).tolist())
        ids = [records[i].id for i in keep]
        seqs = [records[i].sequence for i in keep]
        labels = _sequence_properties(seqs)
        what = f"{fasta.name}; colours are sequence properties (no annotation ships with it)"
        source = f"{len(ids):,} proteins of {what}"
    name = model or str(checkpoint)
    suffix = "" if model is None else f"_{Path(model).name}"
    embedder = load_embedder(name)
    emb = embedder.embed_proteins(seqs)
    vectors = out / f"embeddings{suffix}.per_protein.h5"
    _write_vectors(vectors, ids, emb, embedder)
    summary = project_proteins(ids, emb, labels, out / f"projection{suffix}", ("tsne", "umap"),
                               title=f"{Path(name).name}: {what}")
    result = {"model": name, "source": source, "embeddings": str(vectors), "proteins": summary}
    if model is None:
        result["tokens"] = project_tokens(checkpoint, out / "projection")
    return result


def _write_vectors(path: Path, ids: list[str], emb, embedder) -> None:
    """Per-protein vectors in `protlm embed`'s HDF5 layout (atomic)."""
    from protlm import __version__
    from protlm.embed.store import write_vectors

    write_vectors(path, ids, emb, {**embedder.describe(), "level": "protein", "key": "id",
                                   "output_dtype": "float32", "protlm_version": __version__})


def _heads(out: Path, data: Path, lms: list[str], max_train: int) -> dict:
    from protlm.tasks.suite import run_suite

    suite = bundled("configs", "benchmarks")
    res = run_suite(suite, [*lms, "onehot"], out / "heads", data,
                    tasks=["secondary_structure", "localization"],
                    overrides=[f"train.max_train={max_train}"],
                    cache_dir=out / "cache")
    return {"table": res["table"], "results_md": str(out / "heads" / "results.md"),
            "results": [{k: r[k] for k in ("task", "embedder", "head", "valid", "test", "proteins")}
                        for r in res["results"]]}
