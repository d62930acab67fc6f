"""Fine-tuning speed and memory: protlm's LoRA step vs a plain transformers + peft loop (issue 20).

Model: the ESM-2 35M shape (12 layers, 480 wide, 20 heads, 1920 FFN, rotary, 1026 positions),
random weights (speed does not depend on them), saved once as a model folder with ESM-2's own
tokenizer files (``../shared/data/models/esm2_t6_8M_UR50D_tokenizer_config``, what a user gets
from the hub: the slow ``EsmTokenizer``). LoRA r=8, alpha 16, dropout 0.05 on query/key/value/
attention.output.dense (protlm's ``auto`` targets for ESM), a linear per-residue head with 3
classes, cross-entropy over residue positions, AdamW; fp32 unless a variant says otherwise; the
same trainable parameters and the same torch threads for every method.

Proteins: real bacterial proteins (pyhmmer's bundled proteome, the one ``protlm demo`` uses) of
``--min-len``–``--max-len`` residues, standard amino acids only, drawn at random; random labels.
Batches of ``--batch`` proteins in the order drawn (what a user's shuffled DataLoader gives).

Part 1 and 2 — one training step (tokenise, forward, loss, backward, AdamW step), tokens/s =
real residues per second. Every variant is a fresh model; all run the same batch slot one after
the other (the order rotated each slot), ``--warmup`` untimed slots, then ``--steps`` timed slots:

* ``reference``: ``EsmModel.from_pretrained`` + ``peft.get_peft_model`` + ``nn.Linear`` head,
  ``tokenizer(batch, padding=True)`` → ``last_hidden_state`` → head → CE (``-100`` at
  <cls>/<eos>/padding) → backward → AdamW — what a user writes by hand;
* ``protlm``: ``trainable_lm`` + ``FinetunedModel`` (logreg head) + ``optimizer_for``, batches
  built with ``sequence_batch``, the loss as the residue protocol computes it — src as ``fit_head``
  builds it with the config's defaults (``finetune.max_padding`` 0.1 on a CPU, fp32);
* ``protlm_whole``: the same with ``max_padding: 1`` (every batch through the LM whole, padded:
  protlm before the length groups);
* ``protlm_bf16``: the same with the LM's forward under ``torch.autocast("cpu", bfloat16)``
  (prototype: a ``FinetunedModel`` subclass here; head and loss in fp32);
* ``protlm_split``: the same batch run as length-grouped micro-batches inside ``forward`` (sorted
  by length, a new group when padding would exceed ``--split-tol`` of the group's residues), the
  residue states re-padded for the head: the same loss and gradients as one padded forward
  (prototype of a ``FinetunedModel.forward`` change);
* ``protlm_split_bf16``: both;
* ``protlm_single`` / ``protlm_single_bf16`` (not run by default): the split with no padding at
  all (one protein per micro-batch: no mask, SDPA's fast path);
* ``protlm_sorted`` / ``protlm_sorted_bf16`` (the latter not run by default): the same proteins
  regrouped into length-sorted batches (what protlm's ``epoch_batches`` does with its pools of 50 × batch; here the pool is
  the timed proteins), unchanged step (/ with bf16). Not the same batches as the reference:
  compared on total residues / total time over the same proteins;
* ``src_split`` / ``src_bf16`` / ``src_split_bf16`` (not run by default; only where src's
  ``FinetunedModel`` takes ``max_padding`` / ``precision``): the candidates as src implements
  them (``max_padding = --split-tol``), to check src against the prototypes;
* ``--compile``: ``protlm`` with the LM under ``torch.compile`` (in a child process with a time
  limit on the first, compiling step, ``--compile-limit`` s; skipped when it runs out).

Also measured in the same run: the matmul ceilings (2048³ and the model's own (B·L × 480)·(480 ×
1920) GEMM, fp32 and bf16, at the start and the end, the higher kept); the bf16 loss and gradient
change against fp32 on the same batch and weights (LoRA dropout off); SDPA forward+backward on a
padded batch's shape with and without the padding mask, and whether transformers drops an
all-ones mask itself (candidate (c)); padding fractions (random, split, sorted batches, and
protlm's 50 × batch pools over the whole length distribution). MFU = training FLOPs of the real
tokens per second / fp32 ceiling, the forward counted as 2·N_body + 4·layers·width·L per token
and LoRA's training as 2 × forward (the frozen weights get no gradient); the guide's 3 × forward
convention is in the JSON too.

Part 3 — peak memory of one forward + backward of one ``--memory-length``-residue protein, LoRA
vs full, activation checkpointing off/on, protlm and the reference (and protlm's LoRA with
``lora_dropout: 0`` and with the bf16 prototype, checkpointing off), each in a fresh child
process: the peak RSS of the step (``VmHWM`` reset through ``/proc/self/clear_refs`` right before
the step, after a 20-residue warm-up step) and that minus the RSS before the step. (``ru_maxrss``
is not used: Linux carries the parent's peak across fork + exec; the children run with a fixed
glibc mmap threshold, so freed tensors leave the RSS at once), and the bytes autograd saves for
the backward (saved-tensor hooks; weights excluded; with checkpointing only what is saved outside
the checkpointed layers).

    .venv/bin/python benchmarks/bench_finetune.py --threads 1 --out /tmp/bench_finetune.json \\
        [--batch 8] [--steps 5] [--warmup 2] [--variants ...] [--compile] [--no-memory] [--quick]

About 6.5 minutes with 1 thread and the defaults. On a shared 2-core machine whose other core is
busy, 2 OpenMP threads stall (steps 2–10× slower than with 1 thread, erratic): use ``--threads 1``
there. ``--compile`` adds a child process that compiles for minutes; ``--skip-speed`` runs only
the parts asked for besides it (memory, compile).

Prints Markdown tables and writes ``--out`` (default ``benchmarks/results/finetune.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_FILES = REPO.parent / "shared" / "data" / "models" / "esm2_t6_8M_UR50D_tokenizer_config"
SHAPE = dict(layers=12, hidden=480, heads=20, ffn=1920)
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "key", "value", "attention.output.dense"])
N_CLASSES = 3
STANDARD = set("ACDEFGHIKLMNPQRSTVWY")
ALL_VARIANTS = ("reference", "protlm", "protlm_bf16", "protlm_split", "protlm_split_bf16", "protlm_sorted",
                "protlm_sorted_bf16", "protlm_single", "protlm_single_bf16", "src_split", "src_bf16", "src_split_bf16", "protlm_whole")
DEFAULT_VARIANTS = ALL_VARIANTS[:6]
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16",
             "amx_tile", "amx_int8", "avx512_fp16")


# --------------------------------------------------------------------------- machine, model, data


def machine_info() -> dict:
    flags, model = [], None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
            elif line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import peft
    import transformers

    return {"cpu_model": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkldnn_bf16_supported": bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: None)()),
            "flags_of_interest": {f: f in flags for f in CPU_FLAGS}, "lscpu_flags": " ".join(flags)}


def make_model(folder: Path) -> Path:
    """A random-weight ESM-2 35M-shape folder (safetensors + ESM-2's tokenizer files)."""
    from transformers import EsmConfig, EsmForMaskedLM

    cfg = EsmConfig(vocab_size=33, hidden_size=SHAPE["hidden"], num_hidden_layers=SHAPE["layers"],
                    num_attention_heads=SHAPE["heads"], intermediate_size=SHAPE["ffn"], max_position_embeddings=1026,
                    position_embedding_type="rotary", pad_token_id=1, mask_token_id=32, token_dropout=True,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, emb_layer_norm_before=False,
                    layer_norm_eps=1e-5, hidden_act="gelu")
    torch.manual_seed(0)
    EsmForMaskedLM(cfg).save_pretrained(folder, safe_serialization=True)
    if TOKENIZER_FILES.is_dir():
        for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (TOKENIZER_FILES / name).exists():
                shutil.copy(TOKENIZER_FILES / name, folder / name)
    else:  # protlm's own ESM tokenizer (same ids)
        from protlm.models.vocab import build_tokenizer

        build_tokenizer("esm").save_pretrained(folder)
    return folder


def proteome() -> list[str]:
    from protlm.demo import embedded_proteome

    seqs, cur = [], []
    for line in embedded_proteome().read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur).rstrip("*"))
            cur = []
        else:
            cur.append(line.strip())
    if cur:
        seqs.append("".join(cur).rstrip("*"))
    return [s for s in seqs if s and set(s) <= STANDARD]


def forward_flops(lengths) -> float:
    """2·N_body per token + 4·layers·width·L per token (the guide's count), <cls>/<eos> included."""
    L = np.asarray(lengths, dtype=np.float64) + 2
    d, f, n = SHAPE["hidden"], SHAPE["ffn"], SHAPE["layers"]
    block = 2 * (4 * d * d + 2 * d * f)
    return float(L.sum() * n * block + 4 * n * d * (L ** 2).sum())


def padding_fraction(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return 1.0 - real / padded


def split_groups(lengths: list[int], tol: float) -> list[list[int]]:
    """Indices grouped by length (shortest first): a group grows while its padded size stays
    within (1 + tol) × its residues."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            real = sum(lengths[j] for j in g) + lengths[i]
            if (len(g) + 1) * lengths[i] <= (1.0 + tol) * real:
                g.append(i)
                continue
        groups.append([i])
    return groups


# --------------------------------------------------------------------------- ceilings


def gemm_gflops(m: int, k: int, n: int, dtype, seconds: float = 0.8) -> float:
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        t = time.perf_counter()
        a @ b
        best = max(best, 2.0 * m * k * n / (time.perf_counter() - t))
        if time.perf_counter() > deadline:
            return best / 1e9


def ceilings(rows: int) -> dict:
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"{name}_2048"] = gemm_gflops(2048, 2048, 2048, dtype)
        out[f"{name}_model_gemm"] = gemm_gflops(rows, SHAPE["hidden"], SHAPE["ffn"], dtype)
    return out


# --------------------------------------------------------------------------- the methods


def reference_method(folder: str):
    """What a user writes: transformers + peft, padded batch, CE over residue tokens."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, EsmModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = EsmModel.from_pretrained(folder, add_pooling_layer=False)
    model = get_peft_model(model, LoraConfig(**LORA))
    head = torch.nn.Linear(SHAPE["hidden"], N_CLASSES)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(seqs: list[str], labels: list[np.ndarray]) -> float:
        enc = tok(seqs, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        logits = head(hidden)
        y = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
        for row, lab in enumerate(labels):
            y[row, 1:1 + len(lab)] = torch.from_numpy(lab)
        loss = F.cross_entropy(logits.reshape(-1, N_CLASSES), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step.trainable = sum(p.numel() for p in params)
    return step


def src_has_options() -> bool:
    """Whether src's FinetunedModel takes ``max_padding`` and ``precision`` (the src_* variants)."""
    import inspect

    from protlm.tasks.finetune import FinetunedModel

    params = inspect.signature(FinetunedModel.__init__).parameters
    return "max_padding" in params and "precision" in params


def protlm_model(folder: str, method: str = "lora", checkpointing: bool = False, bf16: bool = False,
                 split_tol: float | None = None, src_options: dict | None = None):
    """(FinetunedModel or the prototype subclass, FinetuneConfig) as protlm's fit_head builds it."""
    from protlm.embed.spec import parse_spec
    from protlm.tasks.finetune import FinetuneConfig, FinetunedModel, trainable_lm
    from protlm.tasks.heads.base import make_head
    from protlm.tasks.heads.logreg import Config as LogregConfig

    class PrototypeModel(FinetunedModel):
        """FinetunedModel with the candidate changes: bf16 autocast of the LM's forward, and a
        padded batch run as length-grouped micro-batches (residue states re-padded for the head)."""

        def __init__(self, backend, head, layer=-1):
            super().__init__(backend, head, layer)
            self.bf16, self.split_tol = bf16, split_tol

        def _states(self, seqs):
            if self.split_tol is None or len(seqs) < 2:
                return self.backend.forward_tokens(seqs, layers=(self.layer,)).hidden[self.layer]
            groups = split_groups([len(s) for s in seqs], self.split_tol)
            if len(groups) == 1:
                return self.backend.forward_tokens(seqs, layers=(self.layer,)).hidden[self.layer]
            width = max(len(s) for s in seqs)
            parts, order = [], []
            for g in groups:
                h = self.backend.forward_tokens([seqs[i] for i in g], layers=(self.layer,)).hidden[self.layer]
                parts.append(F.pad(h, (0, 0, 0, width - h.shape[1])))
                order += g
            inv = torch.empty(len(order), dtype=torch.long)
            inv[torch.tensor(order)] = torch.arange(len(order))
            return torch.cat(parts, 0).index_select(0, inv)

        def forward(self, xb, mb):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                x = self._states(xb.seqs)
            return [o for o in self.head(x.float(), mb)]

    ft = FinetuneConfig(method=method, lr=1e-4, checkpointing=checkpointing, lora_r=LORA["r"],
                        lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"])
    torch.manual_seed(0)
    backend = trainable_lm(parse_spec({"name": folder, "device": "cpu"}), ft)
    head = make_head(LogregConfig(), backend.dim, [N_CLASSES], "residue")
    plain = not bf16 and split_tol is None
    if src_options is not None:  # src's own implementation of the candidates
        model = FinetunedModel(backend, head, -1, **src_options)
    else:
        model = (FinetunedModel(backend, head, -1, ft.max_padding, ft.precision) if plain
                 else PrototypeModel(backend, head, -1))
    return model, ft


def protlm_loss(model, seqs: list[str], labels: list[np.ndarray]) -> torch.Tensor:
    """The residue protocol's loss on a batch built by ``sequence_batch``."""
    from protlm.tasks.finetune import SequenceSet, sequence_batch

    x = SequenceSet([str(i) for i in range(len(seqs))], seqs, model.backend.dim, limit=0)
    xb, mb, windows = sequence_batch(x, list(range(len(seqs))))
    (lg,) = model(xb, mb)
    tg = torch.full(tuple(mb.shape), -1, dtype=torch.long)
    for row, lab in enumerate(labels):
        tg[row, :len(lab)] = torch.from_numpy(lab)
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=-1)


def protlm_method(folder: str, *, bf16: bool = False, split_tol: float | None = None, compile_: bool = False,
                  src_options: dict | None = None):
    from protlm.tasks.finetune import optimizer_for

    model, ft = protlm_model(folder, bf16=bf16, split_tol=split_tol, src_options=src_options)
    if compile_:
        model.backend.module = torch.compile(model.backend.module, dynamic=True)
    opt = optimizer_for(model, 1e-3, 0.0, ft)
    model.train()

    def step(seqs, labels) -> float:
        loss = protlm_loss(model, seqs, labels)
        value = loss.item()  # fit_head reads it before the backward (divergence check)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return value

    step.trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    step.model = model
    return step


def numerics(folder: str, seqs, labels, split_tol: float) -> dict:
    """bf16 vs fp32 (and split vs one padded forward) on the same batch and weights, dropout off:
    the loss and the gradient of every trainable parameter."""
    model, _ = protlm_model(folder, bf16=False, split_tol=None)
    proto, _ = protlm_model(folder, bf16=False, split_tol=split_tol)
    proto.load_state_dict(model.state_dict())
    out = {}

    def run(m, bf16: bool, split: bool):
        m.eval()  # LoRA dropout off: the same function in every run
        if hasattr(m, "bf16"):
            m.bf16, m.split_tol = bf16, (split_tol if split else None)
        m.zero_grad(set_to_none=True)
        loss = protlm_loss(m, seqs, labels)
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.requires_grad and p.grad is not None])
        return loss.item(), g

    l32, g32 = run(model, False, False)
    for name, bf16, split in (("bf16", True, False), ("split_fp32", False, True), ("split_bf16", True, True)):
        lv, gv = run(proto, bf16, split)
        out[name] = {"loss_fp32": l32, "loss": lv, "loss_abs_diff": abs(lv - l32),
                     "loss_rel_diff": abs(lv - l32) / abs(l32),
                     "grad_cosine": float(F.cosine_similarity(g32, gv, dim=0)),
                     "grad_rel_l2": float((gv - g32).norm() / g32.norm())}
    return out


# --------------------------------------------------------------------------- candidate (c): the mask


def mask_checks(batch_lengths: list[int], reps: int = 5) -> dict:
    """Does transformers drop an all-ones mask (SDPA fast path), and what does the padding mask
    cost SDPA forward+backward at a padded batch's shape (B × heads × T × head_dim)?"""
    from transformers import EsmConfig
    from transformers.masking_utils import create_bidirectional_mask

    cfg = EsmConfig(hidden_size=SHAPE["hidden"], num_attention_heads=SHAPE["heads"], num_hidden_layers=1,
                    intermediate_size=SHAPE["ffn"])
    cfg._attn_implementation = "sdpa"
    B, T = len(batch_lengths), max(batch_lengths) + 2
    ones = create_bidirectional_mask(config=cfg, inputs_embeds=torch.zeros(B, T, SHAPE["hidden"]),
                                     attention_mask=torch.ones(B, T, dtype=torch.long))
    m2 = torch.zeros(B, T, dtype=torch.long)
    for row, n in enumerate(batch_lengths):
        m2[row, :n + 2] = 1
    mask = create_bidirectional_mask(config=cfg, inputs_embeds=torch.zeros(B, T, SHAPE["hidden"]), attention_mask=m2)
    hd = SHAPE["hidden"] // SHAPE["heads"]
    q, k, v = (torch.randn(B, SHAPE["heads"], T, hd, requires_grad=True) for _ in range(3))

    def run(m):
        t = time.perf_counter()
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        o.sum().backward()
        return time.perf_counter() - t

    run(None), run(mask)
    times = {"no_mask": [], "mask": []}
    for _ in range(reps):
        times["no_mask"].append(run(None))
        times["mask"].append(run(mask))
    med = {k_: statistics.median(v_) for k_, v_ in times.items()}
    return {"transformers_drops_all_ones_mask": ones is None, "mask_dtype": str(mask.dtype) if mask is not None else None,
            "shape": [B, SHAPE["heads"], T, hd], "sdpa_fwd_bwd_s": med,
            "mask_cost_ratio": med["mask"] / med["no_mask"]}


# --------------------------------------------------------------------------- part 3: memory


def rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hwm_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def memory_child(folder: str, impl: str, method: str, ckpt: bool, seq: str, threads: int) -> None:
    torch.set_num_threads(threads)
    labels = [np.random.default_rng(0).integers(0, N_CLASSES, len(seq))]
    short = seq[:20]

    def fwd_bwd_short():
        fwd_bwd(short, [labels[0][:20]])
    if impl == "protlm":
        bf16 = method.endswith("_bf16")
        if method == "lora_nodropout":
            LORA["lora_dropout"] = 0.0
        model, _ = protlm_model(folder, method=method.split("_")[0], checkpointing=ckpt, bf16=bf16)
        model.train()

        def fwd_bwd(s=seq, lab=labels):
            protlm_loss(model, [s], lab).backward()

        def zero():
            model.zero_grad(set_to_none=True)
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoTokenizer, EsmModel

        tok = AutoTokenizer.from_pretrained(folder)
        lm = EsmModel.from_pretrained(folder, add_pooling_layer=False)
        if ckpt:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm = get_peft_model(lm, LoraConfig(**LORA)) if method == "lora" else lm
        head = torch.nn.Linear(SHAPE["hidden"], N_CLASSES)
        lm.train()

        def fwd_bwd(s=seq, lab=labels):
            enc = tok([s], return_tensors="pt")
            logits = head(lm(**enc).last_hidden_state)
            y = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
            y[0, 1:1 + len(s)] = torch.from_numpy(lab[0])
            F.cross_entropy(logits.reshape(-1, N_CLASSES), y.reshape(-1), ignore_index=-100).backward()

        def zero():
            lm.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
    load_peak = hwm_now()
    fwd_bwd_short()  # first-call costs (oneDNN primitives, thread pool, lazy inits) outside the measurement
    zero()
    gc.collect()
    before = rss_now()
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    params = model.parameters() if impl == "protlm" else list(lm.parameters()) + list(head.parameters())
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict = {}

    def pack(x):  # what autograd keeps for the backward (outside checkpointed regions), weights excluded
        try:
            st = x.untyped_storage()
            if st.data_ptr() not in param_ptrs:
                saved[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return x

    t = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fwd_bwd()
    dt = time.perf_counter() - t
    peak = hwm_now() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trained = sum(p.numel() for p in (model.parameters() if impl == "protlm" else list(lm.parameters()) + list(head.parameters()))
                  if p.requires_grad)
    print(json.dumps({"impl": impl, "method": method, "checkpointing": ckpt, "length": len(seq), "seconds": dt,
                      "trainable_parameters": trained, "load_peak_bytes": load_peak, "rss_before_bytes": before,
                      "step_peak_bytes": peak, "step_delta_bytes": peak - before, "hwm_reset": reset,
                      "saved_activation_bytes": sum(saved.values())}))


def run_child(args: list[str], timeout: float, env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve())] + args
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout:.0f} s", "stdout_tail": (exc.stdout or b"")[-500:].decode(errors="replace")
                if isinstance(exc.stdout, bytes) else str(exc.stdout or "")[-500:]}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-1500:]}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- compile child


def compile_child(folder: str, batches_file: str, threads: int, limit: float) -> None:
    """reference vs protlm with torch.compile, alternated; gives up when the first compiled step
    takes longer than ``limit`` seconds (the parent's timeout is the hard stop)."""
    torch.set_num_threads(threads)
    data = json.loads(Path(batches_file).read_text())
    batches = [(b["seqs"], [np.asarray(x, dtype=np.int64) for x in b["labels"]]) for b in data["batches"]]
    warmup = data["warmup"]
    ref = reference_method(folder)
    comp = protlm_method(folder, compile_=True)
    t = time.perf_counter()
    comp(*batches[0])
    first = time.perf_counter() - t
    print(f"compiled first step {first:.1f} s", file=sys.stderr, flush=True)
    if first > limit:
        print(json.dumps({"skipped": f"first compiled step took {first:.0f} s > {limit:.0f} s", "first_step_s": first}))
        return
    times = {"reference": [], "protlm_compiled": []}
    for j, (seqs, labels) in enumerate(batches):
        for name, fn in (("reference", ref), ("protlm_compiled", comp))[:: 1 if j % 2 == 0 else -1]:
            t = time.perf_counter()
            fn(seqs, labels)
            if j >= warmup:
                times[name].append(time.perf_counter() - t)
    tokens = [sum(len(s) for s in seqs) for seqs, _ in batches[warmup:]]
    ratios = [(r / c) for r, c in zip(times["reference"], times["protlm_compiled"])]
    print(json.dumps({"first_step_s": first, "times_s": times, "tokens": tokens,
                      "ratio_vs_reference_median": statistics.median(ratios),
                      "ratio_vs_reference_total": sum(times["reference"]) / sum(times["protlm_compiled"])}))


# --------------------------------------------------------------------------- part 1/2 driver


def speed(folder: str, variants: list[str], warm: list, timed: list, sorted_warm: list, sorted_timed: list,
          split_tol: float) -> dict:
    makers = {
        "reference": lambda: reference_method(folder),
        "protlm": lambda: protlm_method(folder),
        "protlm_bf16": lambda: protlm_method(folder, bf16=True),
        "protlm_split": lambda: protlm_method(folder, split_tol=split_tol),
        "protlm_split_bf16": lambda: protlm_method(folder, bf16=True, split_tol=split_tol),
        "protlm_sorted": lambda: protlm_method(folder),
        "protlm_sorted_bf16": lambda: protlm_method(folder, bf16=True),
        "protlm_single": lambda: protlm_method(folder, split_tol=0.0),
        "protlm_single_bf16": lambda: protlm_method(folder, bf16=True, split_tol=0.0),
        "protlm_whole": lambda: protlm_method(folder, src_options={"max_padding": 1.0}),
        "src_split": lambda: protlm_method(folder, src_options={"max_padding": split_tol}),
        "src_bf16": lambda: protlm_method(folder, src_options={"precision": "bf16"}),
        "src_split_bf16": lambda: protlm_method(folder, src_options={"max_padding": split_tol, "precision": "bf16"}),
    }
    steppers = {v: makers[v]() for v in variants}
    trainable = {v: s.trainable for v, s in steppers.items()}
    samples: dict = {v: [] for v in variants}
    n_slots = len(warm) + len(timed)
    last: dict = {}
    for j in range(n_slots):
        warmup = j < len(warm)
        k = j if warmup else j - len(warm)
        order = variants[j % len(variants):] + variants[:j % len(variants)]  # rotated each slot
        for v in order:
            seqs, labels = ((sorted_warm if warmup else sorted_timed) if "sorted" in v else (warm if warmup else timed))[k]
            gc.collect()
            t = time.perf_counter()
            loss = steppers[v](seqs, labels)
            dt = time.perf_counter() - t
            last[v] = dt
            if not warmup:
                lengths = [len(s) for s in seqs]
                tol = split_tol if "split" in v else 0.0 if "single" in v else None  # (src: ≈ the same groups)
                groups = split_groups(lengths, tol) if tol is not None else [list(range(len(lengths)))]
                samples[v].append({"slot": k, "s": dt, "residues": sum(lengths),
                                   "padded": len(lengths) * max(lengths),
                                   "computed": sum(len(g) * max(lengths[i] for i in g) for g in groups), "fwd_flops": forward_flops(lengths),
                                   "loss": loss})
        print(f"  slot {j + 1}/{n_slots}{' (warm-up)' if warmup else ''}: "
              + ", ".join(f"{v} {last[v]:.2f}s" for v in variants), flush=True)
    del steppers
    gc.collect()
    return {"samples": samples, "trainable_parameters": trainable}


def summarise(samples: dict, peak_fp32: float, peak_bf16: float) -> dict:
    ref = samples["reference"]
    table = {}
    for v, runs in samples.items():
        total_res = sum(r["residues"] for r in runs)
        total_s = sum(r["s"] for r in runs)
        row = {"tokens_per_s_median": statistics.median(r["residues"] / r["s"] for r in runs),
               "tokens_per_s_total": total_res / total_s, "median_step_s": statistics.median(r["s"] for r in runs),
               "ratio_total_vs_reference": (total_res / total_s) / (sum(r["residues"] for r in ref) / sum(r["s"] for r in ref)),
               # LoRA's work: the forward and the activations' gradients (2 × forward; the frozen
               # weights get no gradient); the guide's 3 × forward convention is kept alongside.
               "mfu_fp32_ceiling": 2 * sum(r["fwd_flops"] for r in runs) / total_s / (peak_fp32 * 1e9),
               "mfu_bf16_ceiling": 2 * sum(r["fwd_flops"] for r in runs) / total_s / (peak_bf16 * 1e9),
               "mfu_fp32_ceiling_3x_convention": 3 * sum(r["fwd_flops"] for r in runs) / total_s / (peak_fp32 * 1e9),
               "padding_fraction": 1 - total_res / sum(r["padded"] for r in runs),
               "computed_padding_fraction": 1 - total_res / sum(r.get("computed", r["padded"]) for r in runs),
               "steps": len(runs)}
        if "sorted" not in v:  # the same batch in the same slot as the reference: paired ratios
            row["ratio_paired_median"] = statistics.median(r0["s"] / r["s"] for r0, r in zip(ref, runs))
            row["ratio_paired_min"] = min(r0["s"] / r["s"] for r0, r in zip(ref, runs))
            row["ratio_paired_max"] = max(r0["s"] / r["s"] for r0, r in zip(ref, runs))
        table[v] = row
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="an ESM model folder (default: a random-weight ESM-2 35M shape built in a temp folder)")
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (batch slots) per variant")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=500)
    ap.add_argument("--split-tol", type=float, default=0.1, help="padding allowed per micro-batch in the split variants")
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=ALL_VARIANTS)
    ap.add_argument("--skip-speed", action="store_true", help="skip parts 1/2 (e.g. only --compile or memory)")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (child process, time-limited)")
    ap.add_argument("--compile-limit", type=float, default=120.0, help="seconds allowed for the first compiled step")
    ap.add_argument("--no-memory", action="store_true", help="skip part 3 (peak memory)")
    ap.add_argument("--memory-length", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny batches, 1 warm-up + 2 steps, 200 residues")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "finetune.json"))
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:  # internal: a child process for memory or compile
        kind, *rest = args.child
        if kind == "memory":
            folder, impl, method, ckpt, seq_file, threads = rest
            memory_child(folder, impl, method, ckpt == "1", Path(seq_file).read_text().strip(), int(threads))
        elif kind == "compile":
            folder, batches_file, threads, limit = rest
            compile_child(folder, batches_file, int(threads), float(limit))
        return 0

    if args.quick:
        args.batch, args.steps, args.warmup, args.max_len, args.memory_length = 4, 2, 1, 150, 200
    if "reference" not in args.variants:
        args.variants = ["reference"] + args.variants
    if any(v.startswith("src_") for v in args.variants) and not src_has_options():
        print("SKIP src_* variants: this src's FinetunedModel takes no max_padding / precision")
        args.variants = [v for v in args.variants if not v.startswith("src_")]
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    folder = args.model or str(make_model(tmp / "esm2_35M_shape"))
    info = machine_info()
    print(f"CPU {info['cpu_model']}, torch {info['torch']} ({info['torch_cpu_capability']}), transformers "
          f"{info['transformers']}, peft {info['peft']}; flags: "
          + ", ".join(f for f, on in info["flags_of_interest"].items() if on), flush=True)

    # ---------------------------------------------------------------- data
    pool = proteome()
    rng = np.random.default_rng(args.seed)
    fitting = [s for s in pool if args.min_len <= len(s) <= args.max_len]
    n = args.batch * (args.warmup + args.steps)
    chosen = [fitting[i] for i in rng.choice(len(fitting), n, replace=False)]
    labels = [rng.integers(0, N_CLASSES, len(s)) for s in chosen]

    def chunk(idx):
        return [([chosen[i] for i in idx[b:b + args.batch]], [labels[i] for i in idx[b:b + args.batch]])
                for b in range(0, len(idx), args.batch)]

    nw = args.batch * args.warmup
    warm = chunk(list(range(nw)))
    timed = chunk(list(range(nw, n)))
    # length-sorted regrouping of the same proteins (protlm's epoch_batches: sort a pool, cut, shuffle)
    sorted_warm = chunk(sorted(range(nw), key=lambda i: len(chosen[i])))
    st = chunk(sorted(range(nw, n), key=lambda i: len(chosen[i])))
    sorted_timed = [st[i] for i in rng.permutation(len(st))]
    lens = lambda bs: [[len(s) for s in b[0]] for b in bs]  # noqa: E731
    split_batches = [[ [lengths[i] for i in g] for g in split_groups(lengths, args.split_tol)] for lengths in lens(timed)]
    # protlm's pools of 50 × batch over the whole 50–500 length distribution (lengths only)
    all_len = np.array([len(s) for s in fitting])
    perm = np.random.default_rng(args.seed + 1).permutation(len(all_len))
    rand_all = [all_len[perm[i:i + args.batch]].tolist() for i in range(0, len(perm) - args.batch + 1, args.batch)]
    pooled = []
    p = 50 * args.batch
    for s in range(0, len(perm), p):
        c = sorted(all_len[perm[s:s + p]].tolist())
        pooled += [c[i:i + args.batch] for i in range(0, len(c), args.batch)]
    padding = {"random_batches": padding_fraction(lens(timed)),
               "split_micro_batches": padding_fraction([g for b in split_batches for g in b]),
               "split_groups_per_batch": [len(b) for b in split_batches],
               "sorted_batches_of_timed_pool": padding_fraction(lens(sorted_timed)),
               "proteome_random_batches": padding_fraction(rand_all),
               "proteome_sorted_pools_50x_batch": padding_fraction(pooled),
               "proteins_in_length_range": len(fitting)}
    print(f"{n} proteins of {args.min_len}-{args.max_len} residues (median {int(np.median([len(s) for s in chosen]))}); "
          f"padding: random {padding['random_batches']:.1%}, split {padding['split_micro_batches']:.1%}, sorted "
          f"{padding['sorted_batches_of_timed_pool']:.1%}", flush=True)

    rows = args.batch * (max(len(s) for s in chosen) + 2)

    results: dict = {}
    for threads in ([] if args.skip_speed else args.threads):
        torch.set_num_threads(threads)
        print(f"\n== {threads} thread(s)", flush=True)
        ceil_start = ceilings(rows)
        print("ceilings (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in ceil_start.items()), flush=True)
        num = numerics(folder, *timed[0], args.split_tol)
        print("numerics vs fp32: " + ", ".join(f"{k}: loss Δ {v['loss_abs_diff']:.2e}, grad cos {v['grad_cosine']:.5f}"
                                               for k, v in num.items()), flush=True)
        masks = mask_checks(lens(timed)[0])
        print(f"mask: transformers drops an all-ones mask: {masks['transformers_drops_all_ones_mask']}; SDPA fwd+bwd "
              f"with padding mask / without: {masks['mask_cost_ratio']:.2f}x", flush=True)
        sp = speed(folder, args.variants, warm, timed, sorted_warm, sorted_timed, args.split_tol)
        ceil_end = ceilings(rows)
        ceil = {k: max(ceil_start[k], ceil_end[k]) for k in ceil_start}
        print("ceilings at the end (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in ceil_end.items()), flush=True)
        peak32 = max(ceil["fp32_2048"], ceil["fp32_model_gemm"])
        peak16 = max(ceil["bf16_2048"], ceil["bf16_model_gemm"])
        results[str(threads)] = {"numerics": num, "mask": masks, "trainable_parameters": sp["trainable_parameters"],
                                 "ceilings_gflops": {"start": ceil_start, "end": ceil_end, "max": ceil},
                                 "table": summarise(sp["samples"], peak32, peak16), "samples": sp["samples"]}

    comp = None
    if args.compile:
        bf = tmp / "batches.json"
        bf.write_text(json.dumps({"warmup": args.warmup, "batches": [
            {"seqs": s, "labels": [x.tolist() for x in lab]} for s, lab in warm + timed]}))
        print("\n== torch.compile (child process)", flush=True)
        comp = run_child(["--child", "compile", folder, str(bf), str(args.threads[-1]), str(args.compile_limit)],
                         timeout=args.compile_limit + 60 + 30 * (args.warmup + args.steps))
        print(f"  {comp}", flush=True)

    memory = []
    if not args.no_memory:
        print(f"\n== peak memory, one forward+backward of {args.memory_length} residues (child processes)", flush=True)
        long = [s for s in pool if len(s) >= args.memory_length]
        seq = long[0][:args.memory_length] if long else "".join(rng.choice(sorted(STANDARD), args.memory_length))
        sf = tmp / "long.txt"
        sf.write_text(seq)
        configs = [(impl, method, ckpt) for impl in ("protlm", "reference") for method in ("lora", "full")
                   for ckpt in ("0", "1")]
        configs[4:4] = [("protlm", "lora_nodropout", "0"), ("protlm", "lora_bf16", "0")]
        for impl, method, ckpt in configs:
            # a fixed mmap threshold: glibc returns every freed block ≥ 64 KiB at once, so
            # the RSS peak follows the live tensors (not the dynamic threshold's history)
            r = run_child(["--child", "memory", folder, impl, method, ckpt, str(sf), str(args.threads[-1])],
                          timeout=300, env={"MALLOC_MMAP_THRESHOLD_": "65536"})
            r.setdefault("impl", impl), r.setdefault("method", method), r.setdefault("checkpointing", ckpt == "1")
            memory.append(r)
            if "error" in r:
                print(f"  {impl} {method} ckpt={ckpt}: {r}", flush=True)
            else:
                print(f"  {impl} {method} ckpt={ckpt}: peak {r['step_peak_bytes'] / 2**20:.0f} MiB, "
                      f"{r['step_delta_bytes'] / 2**20:.0f} MiB above {r['rss_before_bytes'] / 2**20:.0f} MiB, "
                      f"{r['seconds']:.1f} s", flush=True)

    # ---------------------------------------------------------------- report
    print("\npadding fractions: " + ", ".join(f"{k} {v:.1%}" for k, v in padding.items() if isinstance(v, float)))
    for threads, res in results.items():
        ceil = res["ceilings_gflops"]["max"]
        print(f"\n### {threads} thread(s): batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up\n")
        print("matmul ceilings (GFLOP/s, max of start/end): " + ", ".join(f"{k} {v:.0f}" for k, v in ceil.items())
              + f"; bf16/fp32 = {ceil['bf16_2048'] / ceil['fp32_2048']:.2f}× (2048³), "
              f"{ceil['bf16_model_gemm'] / ceil['fp32_model_gemm']:.2f}× (model GEMM {rows}×480·480×1920)\n")
        print("| variant | tokens/s (total) | tokens/s (median step) | × reference (total) | × reference (paired median, min–max) "
              "| batch padding | padding computed | MFU (2×fwd / fp32 ceil.) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for v, row in res["table"].items():
            paired = (f"{row['ratio_paired_median']:.2f}× ({row['ratio_paired_min']:.2f}–{row['ratio_paired_max']:.2f})"
                      if "ratio_paired_median" in row else "—")
            print(f"| {v} | {row['tokens_per_s_total']:.0f} | {row['tokens_per_s_median']:.0f} | "
                  f"{row['ratio_total_vs_reference']:.2f}× | {paired} | {row['padding_fraction']:.1%} | "
                  f"{row['computed_padding_fraction']:.1%} | "
                  f"{100 * row['mfu_fp32_ceiling']:.1f}% |")
        print("\nbf16 / split numerics vs fp32 (same batch, same weights, dropout off):")
        for k, v in res["numerics"].items():
            print(f"  {k}: loss {v['loss']:.6f} vs {v['loss_fp32']:.6f} (rel {v['loss_rel_diff']:.1e}), "
                  f"grad cosine {v['grad_cosine']:.5f}, grad rel L2 {v['grad_rel_l2']:.1e}")
        m = res["mask"]
        print(f"  mask: SDPA fwd+bwd at {m['shape']}: {m['sdpa_fwd_bwd_s']['mask'] * 1e3:.0f} ms with the padding mask, "
              f"{m['sdpa_fwd_bwd_s']['no_mask'] * 1e3:.0f} ms without ({m['mask_cost_ratio']:.2f}×); transformers drops "
              f"an all-ones mask itself: {m['transformers_drops_all_ones_mask']}")
        print(f"  trainable parameters: {res['trainable_parameters']}")
    if comp is not None:
        print(f"\ntorch.compile: {comp}")
    if memory:
        print(f"\n### peak memory, one forward+backward, {args.memory_length} residues, {args.threads[-1]} threads\n")
        print("| impl | method | checkpointing | peak RSS during the step (MiB) | step peak above RSS before (MiB) | "
              "RSS before (MiB) | saved activations (MiB) | trainable params | seconds |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for r in memory:
            if "error" in r:
                print(f"| {r['impl']} | {r['method']} | {r['checkpointing']} | error: {r['error']} | | | |")
                continue
            print(f"| {r['impl']} | {r['method']} | {'on' if r['checkpointing'] else 'off'} | "
                  f"{r['step_peak_bytes'] / 2**20:.0f} | {r['step_delta_bytes'] / 2**20:.0f} | "
                  f"{r['rss_before_bytes'] / 2**20:.0f} | {r['saved_activation_bytes'] / 2**20:.0f} | "
                  f"{r['trainable_parameters']:,} | {r['seconds']:.2f} |")
    doc = {"benchmark": "finetune", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info,
           "threads": args.threads, "model": folder if args.model else "random-weight ESM-2 35M shape",
           "shape": SHAPE, "lora": LORA, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
           "length_range": [args.min_len, args.max_len], "split_tol": args.split_tol,
           "padding": padding,
           "results": results, "compile": comp, "memory": memory, "wall_s": time.perf_counter() - t_start,
           "command": "python " + " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(f"\nwrote {args.out} ({doc['wall_s']:.0f} s)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
