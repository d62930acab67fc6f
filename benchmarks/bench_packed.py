"""Packed variable-length batches (issue 23, item 2) against today's CPU paths, side by side.

Models: random-weight ESM-2 8M (6 × 320, 20 heads) and 35M (12 × 480, 20 heads) shapes (the
speed does not depend on the weights). Proteins: the first ``--proteins`` records of at most
``--max-length`` residues of the Swiss-Prot 20k benchmark sample, in file order, read in place.
Variants, alternated within each round (one torch thread unless ``--threads``), median time:

* ``hf_single``: a plain transformers ``EsmModel`` forward, one protein at a time, fp32;
* ``protlm_equal``: ``Embedder.embed`` with ``equal_length_batches=True`` (the CPU plan before
  packing: only proteins of equal length share a batch);
* ``protlm_packed``: ``Embedder.embed`` with the default plan (packed batches), fp32;
* ``protlm_equal_bf16`` / ``protlm_packed_bf16``: the two plans under bf16 autocast (only where
  protlm.embed.precision finds avx512_bf16 / amx_bf16);
* with ``--padded``: ``equal_length_batches=False`` (padded mixed batches with a mask);
* with ``--compiled``: ``protlm_packed_compiled`` / ``protlm_packed_bf16_compiled``, the packed
  forward with ``--compile`` (torch.compile fuses each layer's per-token work), fp32 and bf16;
* with ``--compiled-symbolic``: ``protlm_packed_bf16_compiled_symbolic``, the bf16 compiled forward
  as it was compiled before 2026-12-07 (``dynamic=True``: every shape symbolic, the head width
  included) — the "before" of docs/benchmarks.md's "static head shapes" section;
* with ``--int8``: ``protlm_int8`` (``--int8``, dynamic int8 linear layers, padded plan);
* with ``--esm-cpp``: ``esmcpp_fp32`` / ``esmcpp_int8``, the esm.cpp engine (PyPI ``esm-cpp``,
  not a protlm dependency: ``pip install esm-cpp==0.2.1``) on the same weights (protlm's canonical
  folder layout, which it loads), ``Model.forward_scheduled`` (its packed, length-bucketed
  batches; it returns the masked-LM logits, so it also runs the small LM head), ``num_threads``
  as ``--threads``, int8 by its ``quantize_weights`` (per-channel int8 weights);
* ``--skip-equal`` leaves out the two equal-length variants.

Also measured: the packed token budget (``--budgets``) and the attention schedules of
:mod:`protlm.embed.packed` (``--schedules``), each interleaved the same way on the 35M shape, and
the outputs: max |packed − hf_single| in fp32, and the bf16 rows' cosine to fp32.

    .venv/bin/python benchmarks/bench_packed.py [--data DIR] [--proteins 100] [--rounds 3] \
        [--threads 1] [--budgets 1000 2000 4000 8000] [--schedules segments grouped padded nested]

Writes ``benchmarks/results/packed.json`` (``--out-json``) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import SHAPES, make_model  # noqa: E402  (the same random-weight model folders)

REPO = Path(__file__).resolve().parents[1]


def interleave(methods: dict, rounds: int, label: str) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each method per round, methods alternated within a round
    (reversed every other round), after one warm-up call each."""
    for fn in methods.values():  # warm-up: first-call allocations and kernel selection
        fn(warm=True)
    times = {m: {"wall": [], "cpu": []} for m in methods}
    for r in range(rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))  # no method always first
        for m in order:
            t, c = time.perf_counter(), time.process_time()
            methods[m](warm=False)
            times[m]["cpu"].append(time.process_time() - c)
            times[m]["wall"].append(time.perf_counter() - t)
            print(f"[{label}] round {r + 1} {m}: {times[m]['wall'][-1]:.2f} s wall, {times[m]['cpu'][-1]:.2f} s CPU",
                  flush=True)
    return times


def summary(times: dict, residues: int, base: str) -> dict:
    """Residues/s from the median wall time and from the median CPU time (on a loaded machine a
    one-thread run's CPU time leaves out the time it waited for a core), and ratios to ``base``."""
    out = {}
    for m, t in times.items():
        row = {"runs_wall_s": t["wall"], "runs_cpu_s": t["cpu"]}
        for clock in ("wall", "cpu"):
            row[f"residues_per_{clock}_s"] = residues / statistics.median(t[clock])
            row[f"ratio_{clock}_vs_{base}"] = statistics.median(t[clock]) and (
                statistics.median(times[base][clock]) / statistics.median(t[clock]))
            # the ratio per round too: its spread says how far to trust the median
            row[f"ratio_{clock}_vs_{base}_runs"] = [times[base][clock][i] / x for i, x in enumerate(t[clock])]
        out[m] = row
    return out


def esm_cpp_engines(folder: str, threads: int) -> dict:
    """esm.cpp models (fp32 and int8) on the weights of ``folder``, written in protlm's canonical
    layout (per-layer inv_freq, LayerNorm weight/bias names), which esm.cpp's loader expects."""
    os.environ["ESM_NUM_THREADS"] = str(threads)  # its thread pool is sized from this at the first load
    import esm_cpp
    from transformers import EsmForMaskedLM

    from protlm.models.folder import save_hf_model

    canon = Path(folder + "_canonical")
    if not (canon / "model.safetensors").exists():
        save_hf_model(EsmForMaskedLM.from_pretrained(folder), canon)
    out = {}
    for name, int8 in (("esmcpp_fp32", False), ("esmcpp_int8", True)):
        model = esm_cpp.Model.load_from_safetensors(str(canon / "model.safetensors"))
        if model.num_threads != threads:
            raise SystemExit(f"esm.cpp runs {model.num_threads} threads, not {threads} (ESM_NUM_THREADS is read "
                             f"at its first model load in the process)")
        if int8:
            model.quantize_weights()
        out[name] = model
    print(f"esm.cpp {esm_cpp.__version__}, ISA {esm_cpp.current_isa()}", flush=True)
    return out


def esm_cpp_child(canon: str, ids_file: str, out_file: str, int8: str, threads: str) -> None:
    """esm.cpp's logits for the token arrays of ``ids_file``, in this (fresh) process."""
    os.environ["ESM_NUM_THREADS"] = threads
    import esm_cpp

    model = esm_cpp.Model.load_from_safetensors(str(Path(canon) / "model.safetensors"))
    if int(int8):
        model.quantize_weights()
    with np.load(ids_file) as z:
        ids = [z[f"arr_{i}"] for i in range(len(z.files))]
    np.savez(out_file, *model.forward_scheduled(ids))


def main() -> int:
    if sys.argv[1:2] == ["--esm-cpp-child"]:
        esm_cpp_child(*sys.argv[2:7])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.environ.get("PROTLM_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--proteins", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="*", default=list(SHAPES))
    ap.add_argument("--padded", action="store_true", help="also time padded mixed batches")
    ap.add_argument("--compiled", action="store_true", help="also time the packed forward with --compile")
    ap.add_argument("--compiled-symbolic", action="store_true",
                    help="also time the bf16 compiled forward with every shape symbolic (the earlier compile)")
    ap.add_argument("--int8", action="store_true", help="also time protlm --int8")
    ap.add_argument("--esm-cpp", action="store_true", help="also time esm.cpp fp32 and int8 (pip install esm-cpp)")
    ap.add_argument("--skip-equal", action="store_true", help="leave out the equal-length variants")
    ap.add_argument("--budgets", nargs="*", type=int, default=[], help="packed token budgets to compare (35M)")
    ap.add_argument("--schedules", nargs="*", default=[], help="packed attention schedules to compare (35M)")
    ap.add_argument("--schedule-proteins", type=int, default=30, help="proteins for the schedule comparison")
    ap.add_argument("--out-json", default=str(REPO / "benchmarks" / "results" / "packed.json"))
    args = ap.parse_args()

    sample = Path(args.data) / "pretraining" / "swissprot_2014_01_go_annotated.random20k_seed0.fasta"
    if not sample.exists():
        print(f"SKIP: {sample} not found")
        return 0
    torch.set_num_threads(args.threads)
    from transformers import EsmModel
    from transformers.utils import logging as hf_logging

    from protlm.data.fasta import read_fasta
    from protlm.embed import EmbedOptions, Embedder
    from protlm.embed.precision import cpu_bf16, cpu_flags

    hf_logging.set_verbosity_error()
    seqs = []
    for rec in read_fasta(sample):
        if len(rec.sequence) <= args.max_length:
            seqs.append(rec.sequence)
        if len(seqs) == args.proteins:
            break
    residues = sum(map(len, seqs))
    bf16_ok, bf16_why = cpu_bf16()
    flags = sorted(f for f in cpu_flags() if f in ("avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile",
                                                   "amx_int8", "avx512f"))
    load = os.getloadavg()
    print(f"{len(seqs)} proteins, {residues:,} residues (lengths {min(map(len, seqs))}–{max(map(len, seqs))}); "
          f"{args.threads} thread(s); CPU flags {flags}; load average {load[0]:.2f}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_packed_"))
    cpu = EmbedOptions(device="cpu")
    results: dict = {"throughput": {}, "budgets": {}, "schedules": {}, "accuracy": {}}

    for name in args.models:
        folder = str(make_model(tmp / name, SHAPES[name]))
        hf = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval()
        embedders = {"protlm_equal": Embedder(folder, EmbedOptions(device="cpu", equal_length_batches=True)),
                     "protlm_packed": Embedder(folder, cpu)}
        if args.compiled:
            embedders["protlm_packed_compiled"] = Embedder(folder, EmbedOptions(device="cpu", compile=True))
        if args.int8:
            embedders["protlm_int8"] = Embedder(folder, EmbedOptions(device="cpu", int8=True))
        if args.padded:
            embedders["protlm_padded"] = Embedder(folder, EmbedOptions(device="cpu", equal_length_batches=False))
        if bf16_ok:
            embedders["protlm_equal_bf16"] = Embedder(folder, EmbedOptions(device="cpu", dtype="bf16",
                                                                            equal_length_batches=True))
            embedders["protlm_packed_bf16"] = Embedder(folder, EmbedOptions(device="cpu", dtype="bf16"))
            if args.compiled:
                embedders["protlm_packed_bf16_compiled"] = Embedder(folder, EmbedOptions(device="cpu", dtype="bf16",
                                                                                          compile=True))
            if args.compiled_symbolic:
                from protlm.embed import packed as packed_mod

                e = Embedder(folder, EmbedOptions(device="cpu", dtype="bf16", compile=True))
                e.backend._compiled.pre = torch.compile(packed_mod._esm_pre, dynamic=True)
                e.backend._compiled.post = torch.compile(packed_mod._esm_post, dynamic=True)
                embedders["protlm_packed_bf16_compiled_symbolic"] = e
        timed = {m: e for m, e in embedders.items() if not (args.skip_equal and m.startswith("protlm_equal"))}
        engines = esm_cpp_engines(folder, args.threads) if args.esm_cpp else {}
        assert embedders["protlm_packed"].backend.packed_batches
        lut = embedders["protlm_packed"].layout

        def hf_single(warm: bool, keep: list | None = None):
            with torch.inference_mode():
                for s in (seqs[:3] if warm else seqs):
                    h = hf(input_ids=torch.from_numpy(lut.encode(s))[None]).last_hidden_state[0, 1:-1]
                    if keep is not None:
                        keep.append(h.numpy().copy())

        def runner(emb):
            return lambda warm: emb.embed(seqs[:3] if warm else seqs)

        def scheduled(engine):
            ids = [np.asarray(lut.encode(s), dtype=np.int32) for s in seqs]
            return lambda warm: engine.forward_scheduled(ids[:3] if warm else ids)

        methods = {"hf_single": hf_single, **{m: runner(e) for m, e in timed.items()},
                   **{m: scheduled(e) for m, e in engines.items()}}
        times = interleave(methods, args.rounds, name)
        results["throughput"][name] = summary(times, residues, "hf_single")

        ref: list = []
        hf_single(False, ref)
        packed = embedders["protlm_packed"].embed(seqs)
        acc = {"max_abs_packed_vs_hf_single": float(max(np.abs(a - b).max() for a, b in zip(packed, ref))),
               "max_abs_equal_vs_hf_single": float(max(np.abs(a - b).max() for a, b in
                                                       zip(embedders["protlm_equal"].embed(seqs), ref)))}
        if bf16_ok:
            low = embedders["protlm_packed_bf16"].embed(seqs)
            cos = [((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min()
                   for a, b in zip(low, packed)]
            acc["min_row_cosine_bf16_vs_fp32"] = float(min(cos))
        for m, e in embedders.items():
            if m in ("protlm_equal", "protlm_packed", "protlm_equal_bf16", "protlm_packed_bf16"):
                continue
            cos = [((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
                   for a, b in zip(e.embed(seqs), packed)]
            acc[f"cosine_{m}_vs_fp32"] = {"mean": float(np.concatenate(cos).mean()),
                                          "min": float(min(c.min() for c in cos))}
        if engines:
            # esm.cpp's scheduled forward returns masked-LM logits: compare them, per residue, with
            # transformers' EsmForMaskedLM in fp32 on the same weights. In a fresh process: on the
            # AMX machine esm.cpp died with SIGILL when called here, after the accuracy passes above
            from transformers import EsmForMaskedLM

            mlm = EsmForMaskedLM.from_pretrained(folder).eval()
            with torch.inference_mode():
                ref_logits = [mlm(input_ids=torch.from_numpy(lut.encode(s))[None]).logits[0].numpy() for s in seqs]
            ids_file = tmp / f"{name}_ids.npz"
            np.savez(ids_file, *[np.asarray(lut.encode(s), dtype=np.int32) for s in seqs])
            for m in engines:
                out_file = tmp / f"{name}_{m}_logits.npz"
                subprocess.run([sys.executable, __file__, "--esm-cpp-child", str(Path(folder + "_canonical")),
                                str(ids_file), str(out_file), str(int(m.endswith("int8"))), str(args.threads)],
                               check=True)
                with np.load(out_file) as z:
                    got = [z[f"arr_{i}"] for i in range(len(seqs))]
                cos = [((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
                       for a, b in zip(got, ref_logits)]
                acc[f"logit_cosine_{m}_vs_hf_fp32"] = {"mean": float(np.concatenate(cos).mean()),
                                                       "min": float(min(c.min() for c in cos))}
        results["accuracy"][name] = acc
        print(f"[{name}] accuracy {acc}", flush=True)

        if name == "esm2_35M" and args.budgets:
            variants = {f"budget_{b}": Embedder(folder, EmbedOptions(device="cpu", tokens_per_batch=b))
                        for b in args.budgets}
            t = interleave({m: runner(e) for m, e in variants.items()}, args.rounds, f"{name} budgets")
            results["budgets"][name] = summary(t, residues, f"budget_{args.budgets[0]}")
        if name == "esm2_35M" and args.schedules:
            few = seqs[:args.schedule_proteins]
            variants = {}
            for s in args.schedules:
                variants[s] = Embedder(folder, cpu)
                variants[s].backend.packed_attention = s
            t = interleave({m: (lambda warm, e=e: e.embed(few[:3] if warm else few)) for m, e in variants.items()},
                           args.rounds, f"{name} schedules")
            results["schedules"][name] = summary(t, sum(map(len, few)), args.schedules[0])
            results["schedules"][name]["proteins"] = len(few)

    def table(title: str, rows: dict, base: str) -> None:
        print(f"\n| {title} | residues/s (wall) | × {base} (wall) | residues/s (CPU) | × {base} (CPU) | "
              f"per-round × (CPU) |")
        print("|---|---:|---:|---:|---:|---|")
        for m, row in rows.items():
            if not isinstance(row, dict):
                continue
            rr = ", ".join(f"{r:.2f}" for r in row[f"ratio_cpu_vs_{base}_runs"])
            print(f"| {m} | {row['residues_per_wall_s']:,.0f} | {row[f'ratio_wall_vs_{base}']:.2f}× | "
                  f"{row['residues_per_cpu_s']:,.0f} | {row[f'ratio_cpu_vs_{base}']:.2f}× | {rr} |")

    for name, rows in results["throughput"].items():
        table(f"{name}, {args.threads} thread(s)", rows, "hf_single")
    for name, rows in results["budgets"].items():
        table(f"{name} packed budget", rows, f"budget_{args.budgets[0]}")
    for name, rows in results["schedules"].items():
        table(f"{name} attention schedule ({rows['proteins']} proteins)", rows, args.schedules[0])
    out = {"benchmark": "packed", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
           "cpu_flags": flags, "bf16": bf16_ok or bf16_why, "load_average_start": load,
           "load_average_end": os.getloadavg(), "proteins": len(seqs), "residues": residues,
           "results": results, "command": "python " + " ".join(sys.argv)}
    Path(args.out_json).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
