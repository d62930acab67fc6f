"""GPU check (issue 23, item 4): the GPU paths of protlm in one run of a few minutes, one table, one JSON.

Made for a lent GPU machine (``bash benchmarks/gpu_check.sh OUT`` from the repository root, after
``pip install -e .``). Stages, in order, each guarded (a failing stage is reported with its one-line
error, the others still run, and the script exits 1 at the end):

* ``ceiling``: the bf16 matmul ceiling of this GPU (``protlm.pretrain.metrics.measure_peak_flops``:
  8192² bf16 matmuls on CUDA, 2048² fp32 on a CPU), measured in this run; every MFU is against it.
* ``embed``: a random-weight ESM-2 35M shape (12 × 480, 20 heads, built as
  ``benchmarks/bench_embed.py`` builds it) on ~64 real proteins (pyhmmer's bundled proteome, the one
  ``protlm demo`` uses): per-residue cosine of protlm's bf16 embeddings to its fp32 ones (mean, min;
  the stage fails below ``--min-cosine``), protlm fp32 against a plain transformers forward, and the
  residues/s of ``Embedder.embed`` against a plain Hugging Face loop, one protein at a time (fp32
  and bf16), methods interleaved, median of ``--rounds``.
* ``pretrain``: a few steps through ``protlm.pretrain.trainer.pretrain`` (what ``protlm pretrain``
  calls), the same shape, bf16 autocast, token-budget batches of the proteome's shards: tokens/s and
  MFU as protlm's own ``metrics.jsonl`` records them (first steps not timed).
* ``finetune_lora`` / ``finetune_full``: a few steps of the ``finetune:`` path (``trainable_lm`` +
  ``FinetunedModel`` + ``optimizer_for``, the residue loss of ``benchmarks/bench_finetune.py``),
  LoRA r=8 and full, bf16: residues/s.
* ``fsdp``: a few pretraining steps with ``train.parallel: fsdp`` launched by
  ``torchrun --standalone --nproc_per_node 1`` (NCCL on a GPU, gloo on a CPU). protlm's trainer
  shards only when more than one process runs (``DistEnv.distributed`` is ``world > 1``), so with
  one process the stage first records whether protlm sharded by itself, and if it did not, hands
  the same ``Trainer`` an environment that reports the one-process group as distributed: protlm's
  own ``wrap_model`` then applies FSDP2 (``fully_shard`` per block, bf16 ``MixedPrecisionPolicy``),
  and the run goes through its collectives, clipping and checkpoint code. The stage checks that
  the parameters really are sharded (DTensors) and reports tokens/s and MFU.

Peak memory is reported per stage (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS).
The environment (device, driver, torch / CUDA / transformers versions, git commit) goes into the
JSON. ``--budget`` (default 540 s) is shared among the stages in proportion to their expected cost
(time one stage does not use passes to the next); a stage past its share is stopped and reported as
``timeout``.

CPU fallback (``--cpu``, and chosen automatically, with a message, when there is no CUDA device):
the same stages at a tiny shape (2 layers × 64) and few steps on the CPU, fp32 training, bf16
parity by autocast where the CPU has bf16 instructions (fp32 against fp32 otherwise, said in the
output), FSDP through torchrun with gloo. It runs in well under a minute on 2 threads, and
``tests/test_gpu_check.py`` runs it; its numbers are not GPU figures.

``--fail-stage NAME`` (repeatable) makes that stage raise at its start: for the test that a failing
stage is reported, the other stages still run and are written, and the exit status is 1.

    python benchmarks/gpu_check.py --out OUT [--cpu] [--budget 540] [--stages ...] [--threads N]
        [--rounds R] [--min-cosine 0.99] [--fail-stage NAME]

Writes ``OUT/gpu_check.json`` (after every stage, atomically) and ``OUT/gpu_check.md`` (the table).
Exit status: 0 when every stage ran (or was skipped with a reason), 1 when one failed or timed out,
143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmark scripts, for their helpers

STAGES = ("ceiling", "embed", "pretrain", "finetune_lora", "finetune_full", "fsdp")
#: Relative share of the budget each stage may use (of what is left when it starts).
SHARES = {"ceiling": 1, "embed": 5, "pretrain": 4, "finetune_lora": 2, "finetune_full": 2, "fsdp": 5}
RESERVE_S = 5.0  # kept for the table and the JSON at the end
AMINO = "ACDEFGHIKLMNPQRSTVWY"


@dataclass(frozen=True)
class Profile:
    """The sizes of one mode: the GPU check, or its CPU fallback."""

    mode: str
    shape_name: str
    shape: dict
    proteins: int  # proteins embedded
    max_protein: int  # longest protein embedded (residues)
    rounds: int  # embedding passes per method (median)
    train_precision: str  # pretraining and fine-tuning
    max_length: int  # pretraining crop, tokens
    tokens_per_batch: int  # pretraining token budget per step
    pretrain_warmup: int  # untimed first steps
    pretrain_steps: int  # timed steps
    valid_sequences: int
    pretrain_proteins: int  # proteins written to the pretraining FASTA (0: all)
    ft_batch: int  # proteins per fine-tuning step
    ft_crop: int  # longest fine-tuning protein (residues)
    ft_warmup: int
    ft_steps: int


def profiles() -> dict[str, Profile]:
    from bench_embed import SHAPES

    return {
        "gpu": Profile("gpu", "ESM-2 35M shape (12 × 480, 20 heads)", SHAPES["esm2_35M"], proteins=64,
                       max_protein=1000, rounds=3, train_precision="bf16", max_length=512, tokens_per_batch=16384,
                       pretrain_warmup=3, pretrain_steps=20, valid_sequences=32, pretrain_proteins=0, ft_batch=8,
                       ft_crop=512, ft_warmup=2, ft_steps=10),
        "cpu": Profile("cpu-fallback", "tiny (2 × 64, 4 heads)", dict(layers=2, hidden=64, heads=4, ffn=256),
                       proteins=16, max_protein=300, rounds=1, train_precision="fp32", max_length=128,
                       tokens_per_batch=1024, pretrain_warmup=1, pretrain_steps=4, valid_sequences=8,
                       pretrain_proteins=400, ft_batch=4, ft_crop=128, ft_warmup=1, ft_steps=3),
    }


class StageSkipped(Exception):
    """The stage cannot run here; the message says why (reported as skipped, not passed)."""


class StageTimeout(Exception):
    """The stage ran past its share of the budget."""


class InjectedFailure(RuntimeError):
    """``--fail-stage``: a deliberate failure, for the test of the failure path."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


@contextmanager
def time_limit(seconds: float):
    """Raise StageTimeout in the main thread after ``seconds`` (SIGALRM; the check's hard guard per stage)."""
    def on_alarm(signum, frame):
        raise StageTimeout(f"ran past its {seconds:.0f} s share of the time budget")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- device helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def peak_memory_mib(device: torch.device) -> float:
    """CUDA: the stage's peak allocated memory; CPU: the process's peak RSS (since the last reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from bench_finetune import hwm_now

    try:
        peak = hwm_now()
    except OSError:
        peak = 0
    return (peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- environment


def git_state() -> dict:
    """The commit (PROTLM_GIT_COMMIT wins: a copied working tree may have no .git) and whether
    tracked files differ from it."""
    out = {"commit": os.environ.get("PROTLM_GIT_COMMIT") or "unknown", "dirty": None}
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and out["commit"] == "unknown":
            out["commit"] = head.stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        if status.returncode == 0:
            out["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment(device: torch.device, profile: Profile, reason: str | None) -> dict:
    import transformers

    import protlm
    from bench_precision import cpu_info

    env = {"mode": profile.mode, "fallback_reason": reason, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "protlm": protlm.__version__, "git": git_state(), "torch_threads": torch.get_num_threads(),
           "cpu": cpu_info(), "loadavg_1min": os.getloadavg()[0], "shape": profile.shape_name,
           "command": "python " + " ".join(sys.argv)}
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        env["peft"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"device": torch.cuda.get_device_name(device),
                    "device_capability": list(torch.cuda.get_device_capability(device)),
                    "device_memory_gib": props.total_memory / 2**30, "cudnn": torch.backends.cudnn.version(),
                    "tf32_matmul": torch.backends.cuda.matmul.allow_tf32})
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=15)
            env["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device"] = f"CPU: {env['cpu'].get('model') or platform.processor() or platform.machine()}"
    return env


# --------------------------------------------------------------------------- shared inputs


class Context:
    def __init__(self, args, profile: Profile, device: torch.device, tmp: Path):
        self.args, self.profile, self.device, self.tmp = args, profile, device, tmp
        self.peak_flops = 0.0  # from the ceiling stage; 0: the trainer measures its own
        self.stage_deadline = math.inf
        self.pretrain_losses: list[float] | None = None  # the pretrain stage's, for the FSDP run's comparison
        self._proteome: tuple[list[str], str] | None = None
        self._folder: Path | None = None
        self._shards: Path | None = None

    def proteome(self) -> tuple[list[str], str]:
        """Real proteins (pyhmmer's bundled proteome, standard residues only), or seeded random ones
        where pyhmmer's wheel carries none."""
        if self._proteome is None:
            try:
                from bench_finetune import proteome

                self._proteome = (proteome(), "pyhmmer's bundled proteome (protlm demo's)")
            except Exception as exc:  # InputError (no pyhmmer proteome) or an unreadable file
                rng = np.random.default_rng(0)
                seqs = ["".join(rng.choice(list(AMINO), int(n))) for n in rng.integers(40, 1000, 2000)]
                self._proteome = (seqs, f"synthetic (seeded random; no proteome: {one_line(exc)})")
        return self._proteome

    def embed_proteins(self) -> list[str]:
        seqs, _ = self.proteome()
        fit = [s for s in seqs if len(s) <= self.profile.max_protein]
        order = np.random.default_rng(0).permutation(len(fit))
        return [fit[i] for i in order[:self.profile.proteins]]

    def model_folder(self) -> Path:
        """The random-weight model folder every stage uses, built as bench_embed.py builds it."""
        if self._folder is None:
            from bench_embed import make_model

            self._folder = make_model(self.tmp / "model", self.profile.shape)
        return self._folder

    def shards(self) -> Path:
        if self._shards is None:
            from protlm.data.prepare import PrepareOptions, prepare

            seqs, _ = self.proteome()
            if self.profile.pretrain_proteins:
                seqs = seqs[:self.profile.pretrain_proteins]
            fasta = self.tmp / "pretrain.fasta"
            fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
            prepare(fasta, self.tmp / "shards", PrepareOptions())
            self._shards = self.tmp / "shards"
        return self._shards

    def pretrain_tree(self, parallel: str) -> dict:
        p = self.profile
        steps = p.pretrain_warmup + p.pretrain_steps
        return {
            "model": {"arch": "esm", "preset": "small",
                      **{k: p.shape[k] for k in ("layers", "hidden", "heads", "ffn")}},
            "data": {"shards": str(self.shards()), "valid_sequences": p.valid_sequences},
            "optimizer": {"name": "adamw", "lr": 1e-4, "warmup_steps": 0, "schedule": "constant"},
            "train": {"phases": [{"steps": steps, "max_length": p.max_length, "tokens_per_batch": p.tokens_per_batch}],
                      "precision": p.train_precision, "parallel": parallel, "log_every": 1, "eval_every": steps,
                      "save_every": steps, "peak_flops": self.peak_flops, "tensorboard": False},
        }


def train_summary(records: list[dict], warmup: int) -> dict:
    """tokens/s and MFU over the timed steps of a protlm metrics.jsonl (``log_every: 1``)."""
    train = [r for r in records if r.get("kind") == "train"]
    timed = train[warmup:]
    if not timed:
        raise RuntimeError(f"metrics.jsonl has {len(train)} training records, none after the {warmup} warm-up steps")
    seconds = sum(r["elapsed_s"] for r in timed)
    tokens = sum(r["tokens_per_s"] * r["elapsed_s"] for r in timed)
    return {"tokens_per_s": tokens / seconds, "mfu": sum(r["mfu"] * r["elapsed_s"] for r in timed) / seconds,
            "timed_steps": len(timed), "timed_seconds": seconds,
            "median_step_s": statistics.median(r["elapsed_s"] for r in timed),
            "loss_last": timed[-1]["loss"], "losses": [r["loss"] for r in train]}


def rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


# --------------------------------------------------------------------------- stages


def stage_ceiling(ctx: Context, res: dict) -> None:
    from protlm.pretrain.metrics import measure_peak_flops

    dev = ctx.device
    ctx.peak_flops = measure_peak_flops(dev, seconds=2.0 if dev.type == "cuda" else 0.6)
    what = "bf16 8192² matmul" if dev.type == "cuda" else "fp32 2048² matmul (the CPU training precision)"
    res["metrics"]["peak_flops"] = ctx.peak_flops
    res["info"]["what"] = what
    shown = f"{ctx.peak_flops / 1e12:,.1f} TFLOP/s" if dev.type == "cuda" else f"{ctx.peak_flops / 1e9:,.1f} GFLOP/s"
    res["rows"].append({"what": f"matmul ceiling, {what}", "result": shown})


def hf_one_at_a_time(model, layout, seqs: list[str], device: torch.device,
                     autocast_bf16: bool = False) -> list[np.ndarray]:
    """A plain transformers forward per protein (what a user writes), per-residue states back on the CPU."""
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
        for s in seqs:
            ids = torch.from_numpy(layout.encode(s))[None].to(device)
            h = model(input_ids=ids).last_hidden_state[0, len(layout.prefix):len(layout.prefix) + len(s)]
            out.append(h.float().cpu().numpy())
    return out


def stage_embed(ctx: Context, res: dict) -> None:
    from transformers import EsmModel
    from transformers.utils import logging as hf_logging

    from bench_precision import cosines, summary
    from protlm.embed import EmbedOptions, Embedder
    from protlm.embed.precision import bf16_capable

    hf_logging.set_verbosity_error()
    dev, prof, m, info = ctx.device, ctx.profile, res["metrics"], res["info"]
    seqs = ctx.embed_proteins()
    residues = sum(map(len, seqs))
    folder = str(ctx.model_folder())
    bf16_ok, why = bf16_capable(dev.type)
    info.update({"proteins": len(seqs), "residues": residues, "source": ctx.proteome()[1], "bf16": bf16_ok,
                 "rounds": prof.rounds})
    embedders = {"protlm_fp32": Embedder(folder, EmbedOptions(device=dev.type, dtype="fp32"))}
    if bf16_ok:
        embedders["protlm_bf16"] = Embedder(folder, EmbedOptions(device=dev.type, dtype="bf16"))
    layout = embedders["protlm_fp32"].layout
    hf32 = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval().to(dev)
    methods = {"hf_fp32": lambda s: hf_one_at_a_time(hf32, layout, s, dev)}
    if bf16_ok:  # the way protlm runs bf16 on that device: a bf16 model on a GPU, autocast on a CPU
        if dev.type == "cuda":
            hf16 = EsmModel.from_pretrained(folder, add_pooling_layer=False).eval().to(dev, dtype=torch.bfloat16)
            methods["hf_bf16"] = lambda s: hf_one_at_a_time(hf16, layout, s, dev)
        else:
            methods["hf_bf16"] = lambda s: hf_one_at_a_time(hf32, layout, s, dev, autocast_bf16=True)
    methods.update({k: (lambda s, e=e: e.embed(s)) for k, e in embedders.items()})
    for fn in methods.values():  # warm-up: allocations, kernel selection
        fn(seqs[:4])
    times: dict[str, list[float]] = {k: [] for k in methods}
    outs: dict[str, list[np.ndarray]] = {}
    for r in range(prof.rounds):
        for k, fn in methods.items():
            sync(dev)
            t = time.perf_counter()
            out = fn(seqs)
            sync(dev)
            times[k].append(time.perf_counter() - t)
            if r == 0:
                outs[k] = out
    speed = {k: residues / statistics.median(v) for k, v in times.items()}
    for k, v in speed.items():
        m[f"{k}_residues_per_s"] = v
    info["seconds"] = times

    vs_hf = summary(cosines(outs["protlm_fp32"], outs["hf_fp32"]))
    m["protlm_fp32_vs_hf_fp32_cos_min"] = vs_hf["cos_min"]
    if bf16_ok:
        parity = summary(cosines(outs["protlm_bf16"], outs["protlm_fp32"]))
        info["parity"] = "protlm bf16 vs protlm fp32, per residue"
    else:
        parity = vs_hf
        info["parity"] = f"fp32 vs fp32 (protlm vs plain transformers): no bf16 here ({why})"
    m["parity_cos_mean"], m["parity_cos_min"] = parity["cos_mean"], parity["cos_min"]
    m["protlm_fp32_vs_hf_fp32"] = speed["protlm_fp32"] / speed["hf_fp32"]
    label = "bf16 vs fp32" if bf16_ok else "fp32 vs fp32 (NO bf16 here)"
    res["rows"] += [
        {"what": f"embedding parity {label}, per-residue cosine, {len(seqs)} proteins",
         "result": f"mean {parity['cos_mean']:.5f}, min {parity['cos_min']:.5f}"},
        {"what": "protlm fp32 vs plain transformers fp32, cosine", "result": f"min {vs_hf['cos_min']:.5f}"},
        {"what": "plain HF fp32, one protein at a time", "result": f"{rate(speed['hf_fp32'])} res/s"},
        {"what": "protlm Embedder fp32", "result": f"{rate(speed['protlm_fp32'])} res/s = "
                                                  f"{m['protlm_fp32_vs_hf_fp32']:.2f}× HF fp32"},
    ]
    if bf16_ok:
        m["protlm_bf16_vs_hf_bf16"] = speed["protlm_bf16"] / speed["hf_bf16"]
        m["protlm_bf16_vs_hf_fp32"] = speed["protlm_bf16"] / speed["hf_fp32"]
        res["rows"] += [
            {"what": "plain HF bf16, one protein at a time", "result": f"{rate(speed['hf_bf16'])} res/s"},
            {"what": "protlm Embedder bf16", "result": f"{rate(speed['protlm_bf16'])} res/s = "
                                                      f"{m['protlm_bf16_vs_hf_bf16']:.2f}× HF bf16, "
                                                      f"{m['protlm_bf16_vs_hf_fp32']:.2f}× HF fp32"}]
    if parity["cos_min"] < ctx.args.min_cosine:
        raise RuntimeError(f"embedding parity: worst per-residue cosine {parity['cos_min']:.5f} < "
                           f"{ctx.args.min_cosine}")


def stage_pretrain(ctx: Context, res: dict) -> None:
    from protlm.pretrain.config import load_config
    from protlm.pretrain.metrics import read_metrics
    from protlm.pretrain.trainer import pretrain

    prof = ctx.profile
    config = load_config(data=ctx.pretrain_tree("ddp"))
    out = ctx.tmp / "pretrain"
    result = pretrain(config, out, progress=False)
    s = train_summary(read_metrics(out), prof.pretrain_warmup)
    ctx.pretrain_losses = s["losses"]
    res["metrics"].update({k: s[k] for k in ("tokens_per_s", "mfu", "timed_steps", "median_step_s", "loss_last")})
    res["info"].update({"parameters": result["params"], "precision": prof.train_precision,
                        "tokens_per_batch": prof.tokens_per_batch, "max_length": prof.max_length,
                        "warmup_steps_not_timed": prof.pretrain_warmup, "final_model": bool(result.get("model"))})
    res["rows"].append({"what": f"protlm pretrain, {prof.train_precision}, {s['timed_steps']} steps of "
                                f"{prof.tokens_per_batch:,} tokens", "result": f"{rate(s['tokens_per_s'])} tokens/s",
                        "mfu": s["mfu"]})


def stage_finetune(ctx: Context, res: dict, method: str) -> None:
    from bench_finetune import LORA, N_CLASSES, protlm_loss
    from protlm.embed.spec import parse_spec
    from protlm.tasks.finetune import FinetuneConfig, FinetunedModel, optimizer_for, trainable_lm
    from protlm.tasks.heads.base import make_head
    from protlm.tasks.heads.logreg import Config as LogregConfig

    dev, prof = ctx.device, ctx.profile
    ft = FinetuneConfig(method=method, lr=1e-4, precision=prof.train_precision, lora_r=LORA["r"],
                        lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"])
    ft.validate()
    torch.manual_seed(0)
    backend = trainable_lm(parse_spec({"name": str(ctx.model_folder()), "device": dev.type}), ft)
    head = make_head(LogregConfig(), backend.dim, [N_CLASSES], "residue")
    model = FinetunedModel(backend, head, -1, ft.max_padding, ft.precision)
    opt = optimizer_for(model, 1e-3, 0.0, ft)
    model.train()
    seqs, _ = ctx.proteome()
    rng = np.random.default_rng(1)
    n_steps = prof.ft_warmup + prof.ft_steps
    batches = []
    for _ in range(n_steps):
        picked = [seqs[i][:prof.ft_crop] for i in rng.choice(len(seqs), prof.ft_batch, replace=False)]
        batches.append((picked, [rng.integers(0, N_CLASSES, len(s)) for s in picked]))
    times, residues, losses = [], [], []
    for k, (picked, labels) in enumerate(batches):
        sync(dev)
        t = time.perf_counter()
        loss = protlm_loss(model, picked, labels)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(dev)
        dt = time.perf_counter() - t
        if k >= prof.ft_warmup:
            times.append(dt)
            residues.append(sum(map(len, picked)))
        if times and time.monotonic() + 2 * dt > ctx.stage_deadline:
            break  # what is timed so far is reported; the stage's share of the budget is nearly used
    if not times:
        raise RuntimeError("no fine-tuning step was timed (the warm-up used the stage's time)")
    trained = sum(p.numel() for g in opt.param_groups for p in g["params"])
    tok_s = sum(residues) / sum(times)
    res["metrics"].update({"tokens_per_s": tok_s, "timed_steps": len(times), "median_step_s": statistics.median(times),
                           "trainable_parameters": trained, "loss_last": losses[-1]})
    res["info"].update({"precision": ft.precision, "batch": prof.ft_batch, "crop": prof.ft_crop,
                        "lora": LORA if method == "lora" else None, "warmup_steps_not_timed": prof.ft_warmup})
    res["rows"].append({"what": f"fine-tuning {method} ({trained:,} trained), {ft.precision}, {len(times)} steps of "
                                f"{prof.ft_batch} proteins", "result": f"{rate(tok_s)} residues/s"})


def stage_fsdp(ctx: Context, res: dict) -> None:
    import importlib.util

    import torch.distributed as dist

    dev, prof = ctx.device, ctx.profile
    if not dist.is_available():
        raise StageSkipped("this torch build has no torch.distributed")
    if importlib.util.find_spec("torch.distributed.run") is None:
        raise StageSkipped("torchrun (torch.distributed.run) is not available")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not (dist.is_nccl_available() if backend == "nccl" else dist.is_gloo_available()):
        raise StageSkipped(f"torch.distributed has no {backend} backend here")
    work = ctx.tmp / "fsdp"
    work.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    spec = {"config": ctx.pretrain_tree("fsdp"), "out": str(work), "result": str(work / "result.json"),
            "warmup": prof.pretrain_warmup, "threads": threads if dev.type == "cpu" else 0}
    (work / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(Path(__file__).resolve()), "--fsdp-child", str(work / "spec.json")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if dev.type == "cpu" else dict(os.environ)
    log = work / "torchrun.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait()
        finally:  # a timeout or SIGTERM here: stop the worker and torchrun, which run in sessions of their own
            if proc.poll() is None:
                stop_worker(work / "worker.pid")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    tail = log.read_text(errors="replace").splitlines()[-15:]
    result = json.loads((work / "result.json").read_text()) if (work / "result.json").exists() else {}
    if rc != 0 or "error" in result or not result:
        res["info"]["torchrun_log_tail"] = tail
        raise RuntimeError(result.get("error") or f"torchrun exited {rc}: {tail[-1] if tail else 'no output'}")
    for k in ("tokens_per_s", "mfu", "timed_steps", "median_step_s", "loss_last", "sharded_parameters", "peak_mem_mib"):
        res["metrics"][k] = result[k]
    res["info"].update({k: result[k] for k in ("backend", "world", "param_dtype",
                                               "how", "losses")})
    res["info"]["command"] = " ".join(cmd[:6]) + " benchmarks/gpu_check.py --fsdp-child SPEC"
    how = "protlm's own"
    same = ""
    if ctx.pretrain_losses is not None and len(ctx.pretrain_losses) == len(result["losses"]):
        # the same config, seed and batches as the pretrain stage: the losses say whether FSDP changed the numbers
        diff = max(abs(a - b) for a, b in zip(ctx.pretrain_losses, result["losses"]))
        res["info"]["loss_max_abs_diff_vs_pretrain"] = diff
        same = f"; loss vs the pretrain stage's max abs diff {diff:.1e}"
    res["rows"].append({"what": f"FSDP2 ({how}, {result['sharded_parameters']} sharded tensors), torchrun 1 process, "
                                f"{backend}, {prof.train_precision}, {result['timed_steps']} steps",
                        "result": f"{rate(result['tokens_per_s'])} tokens/s{same}",
                        "mfu": result["mfu"], "peak_mem_mib": result["peak_mem_mib"]})


# --------------------------------------------------------------------------- the FSDP worker (under torchrun)


def stop_worker(pidfile: Path) -> None:
    """SIGKILL the FSDP worker whose PID it wrote (torchrun starts it in a session of its own, so
    killing torchrun's process group leaves it running); the command line is checked first, so a
    PID reused by another process is left alone."""
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return
    if "--fsdp-child" in cmdline and str(pidfile.parent) in cmdline:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sharded_parameters(model: torch.nn.Module) -> int:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor
    return sum(isinstance(p, DTensor) for p in model.parameters())


def fsdp_worker(spec: dict) -> dict:
    import torch.distributed as dist

    from protlm.io.processes import init_distributed
    from protlm.pretrain.config import load_config
    from protlm.pretrain.metrics import read_metrics
    from protlm.pretrain.trainer import Trainer

    if "WORLD_SIZE" not in os.environ:
        raise RuntimeError("--fsdp-child runs under torchrun")
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    # protlm's own set-up: with train.parallel fsdp, torchrun's one process gets a process group
    env = init_distributed(one_process_group=True)
    if not env.distributed:
        raise RuntimeError("protlm made no process group for one torchrun process with FSDP")
    config = load_config(data=spec["config"])
    out = Path(spec["out"])
    reset_peak_memory(env.device)
    trainer = Trainer(config, out / "fsdp", env=env, progress=False)
    sharded = sharded_parameters(trainer.model)
    if sharded == 0:
        raise RuntimeError("train.parallel fsdp: no parameter was sharded (no DTensor after wrap_model)")
    how = "protlm sharded the model by itself (a one-process group under torchrun)"
    param_dtype = None
    mp = getattr(trainer, "autocast_dtype", None)
    if mp is not None:
        param_dtype = str(mp)
    trainer.run()
    s = train_summary(read_metrics(trainer.out), spec["warmup"])
    result = {**s, "sharded_parameters": sharded,
              "backend": dist.get_backend(), "world": dist.get_world_size(), "param_dtype": param_dtype, "how": how,
              "peak_mem_mib": peak_memory_mib(env.device)}
    dist.destroy_process_group()
    return result


def fsdp_child(spec_path: str) -> int:
    from protlm.io.atomic import write_json

    spec = json.loads(Path(spec_path).read_text())
    (Path(spec_path).parent / "worker.pid").write_text(str(os.getpid()))
    try:
        result = fsdp_worker(spec)
    except BaseException as exc:  # reported to the parent as one line (the traceback goes to the log)
        traceback.print_exc()
        write_json(spec["result"], {"error": one_line(exc)})
        return 1
    write_json(spec["result"], result)
    return 0


# --------------------------------------------------------------------------- running, table, JSON


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def table(doc: dict) -> str:
    lines = ["| stage | status | measurement | result | MFU | peak mem MiB | s |", "|---|---|---|---|---:|---:|---:|"]
    for name, st in doc["stages"].items():
        secs = f"{st['seconds']:.1f}" if st.get("seconds") is not None else ""
        mem = st["metrics"].get("peak_mem_mib")
        if st["status"] != "ok" and not st["rows"]:
            why = st.get("error") or st.get("reason") or ""
            lines.append(f"| {name} | **{st['status'].upper()}** | {why} | | | | {secs} |")
            continue
        for i, row in enumerate(st["rows"]):
            status = (st["status"] if st["status"] == "ok" else f"**{st['status'].upper()}**") if i == 0 else ""
            mfu = f"{100 * row['mfu']:.1f}%" if row.get("mfu") else ""
            row_mem = row.get("peak_mem_mib", mem if i == 0 else None)
            lines.append(f"| {name if i == 0 else ''} | {status} | {row['what']} | {row['result']} | {mfu} | "
                         f"{f'{row_mem:,.0f}' if row_mem else ''} | {secs if i == 0 else ''} |")
        if st["status"] != "ok":
            lines.append(f"| | | {st.get('error') or st.get('reason')} | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for gpu_check.json and gpu_check.md (created)")
    ap.add_argument("--cpu", action="store_true", help="the CPU fallback (tiny shapes), even where CUDA exists")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all stages together (default 540)")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the stages to run (default all)")
    ap.add_argument("--fail-stage", action="append", default=[], choices=STAGES,
                    help="make this stage fail at its start (tests the failure path; repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    ap.add_argument("--rounds", type=int, default=None, help="embedding passes per method (default 3 GPU, 1 CPU)")
    ap.add_argument("--min-cosine", type=float, default=0.99, help="embedding parity: worst per-residue cosine allowed")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (models, shards, runs)")
    ap.add_argument("--fsdp-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fsdp_child:
        return fsdp_child(args.fsdp_child)
    if not args.out:
        ap.error("--out is required")
    t_start = time.monotonic()
    deadline = t_start + args.budget

    def on_term(signum, frame):
        from protlm.errors import Terminated

        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's shard bar: noise in a device's short output tail
    if args.threads:
        torch.set_num_threads(args.threads)
    reason = None
    if args.cpu:
        # before any CUDA call: protlm's trainers (and the torchrun worker) take a GPU wherever they see one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        reason = "--cpu given"
    elif not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False)"
        print(f"gpu_check: {reason}: running the CPU fallback (tiny shapes, few steps); its numbers are not GPU "
              f"figures", flush=True)
    profile = profiles()["cpu" if reason else "gpu"]
    if args.rounds:
        profile = replace(profile, rounds=args.rounds)
    device = torch.device("cpu") if reason else torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.init()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    ctx = Context(args, profile, device, tmp)
    from protlm.io.atomic import write_json, write_text

    doc = {"benchmark": "gpu_check", "environment": environment(device, profile, reason),
           "profile": asdict(profile), "budget_s": args.budget, "stages": {}}
    print(f"gpu_check: {doc['environment']['device']}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"commit {doc['environment']['git']['commit'][:12]}; mode {profile.mode}; budget {args.budget:.0f} s",
          flush=True)
    functions = {"ceiling": stage_ceiling, "embed": stage_embed, "pretrain": stage_pretrain,
                 "finetune_lora": lambda c, r: stage_finetune(c, r, "lora"),
                 "finetune_full": lambda c, r: stage_finetune(c, r, "full"), "fsdp": stage_fsdp}
    selected = [s for s in STAGES if s in args.stages]
    terminated = None
    try:
        for i, name in enumerate(selected):
            res = {"status": "ok", "metrics": {}, "info": {}, "rows": [], "seconds": None}
            doc["stages"][name] = res
            left = deadline - RESERVE_S - time.monotonic()
            # its share of what is left (time earlier stages did not use passes on), at least a few seconds
            limit = max(left * SHARES[name] / sum(SHARES[s] for s in selected[i:]), min(left, 5.0))
            if limit < 2.0:
                res.update(status="timeout", error=f"not started: {left:.0f} s of the {args.budget:.0f} s budget left")
                print(f"[{name}] TIMEOUT (not started): no time left in the budget", flush=True)
                write_json(out / "gpu_check.json", doc)
                continue
            ctx.stage_deadline = time.monotonic() + limit
            print(f"[{name}] running (at most {limit:.0f} s)", flush=True)
            reset_peak_memory(device)
            t = time.monotonic()
            try:
                with time_limit(limit):
                    if name in args.fail_stage:
                        raise InjectedFailure(f"deliberate failure of stage {name} (--fail-stage)")
                    functions[name](ctx, res)
            except StageSkipped as exc:
                res.update(status="skipped", reason=str(exc))
            except StageTimeout as exc:
                res.update(status="timeout", error=f"StageTimeout: {exc}")
            except Exception as exc:
                res.update(status="failed", error=one_line(exc), traceback=traceback.format_exc()[-4000:])
                traceback.print_exc()
            res["seconds"] = time.monotonic() - t
            if "peak_mem_mib" not in res["metrics"] and res["status"] == "ok":
                res["metrics"]["peak_mem_mib"] = peak_memory_mib(device)
            free_memory(device)
            print(f"[{name}] {res['status']} in {res['seconds']:.1f} s"
                  + (f": {res.get('error') or res.get('reason')}" if res["status"] != "ok" else ""), flush=True)
            write_json(out / "gpu_check.json", doc)
    except KeyboardInterrupt as exc:  # SIGTERM (Terminated) or Ctrl-C: the stage is recorded, the rest is not run
        terminated = exc
        current = next(reversed(doc["stages"].values()), None)
        if current is not None:
            current.update(status="failed", error=f"{type(exc).__name__}: stopped by a signal")
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    statuses = {n: s["status"] for n, s in doc["stages"].items()}
    bad = [n for n, s in statuses.items() if s in ("failed", "timeout")]
    if device.type == "cuda":
        mems = [s["metrics"].get("peak_mem_mib", 0) for s in doc["stages"].values()]
        doc["peak_gpu_mem_mib"] = max(mems, default=0)
    doc["summary"] = {"ok": [n for n, s in statuses.items() if s == "ok"],
                      "skipped": {n: doc["stages"][n].get("reason") for n, s in statuses.items() if s == "skipped"},
                      "failed": {n: doc["stages"][n].get("error") for n in bad},
                      "wall_s": time.monotonic() - t_start}
    rc = 143 if terminated is not None else (1 if bad else 0)
    doc["exit_code"] = rc
    text = table(doc)
    head = (f"GPU check, {profile.mode} ({doc['environment']['device']}; {profile.shape_name}); torch "
            f"{torch.__version__}, CUDA {torch.version.cuda}; commit {doc['environment']['git']['commit'][:12]}")
    if reason:
        head += f"\nCPU FALLBACK ({reason}): tiny shapes, few steps; not GPU figures"
    print(f"\n{head}\n\n{text}\n")
    print(f"{len(doc['summary']['ok'])} ok, {len(doc['summary']['skipped'])} skipped, {len(bad)} failed "
          f"({', '.join(bad) or 'none'}); {doc['summary']['wall_s']:.0f} s; wrote {out / 'gpu_check.json'}", flush=True)
    write_json(out / "gpu_check.json", doc)
    write_text(out / "gpu_check.md", f"{head}\n\n{text}\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
