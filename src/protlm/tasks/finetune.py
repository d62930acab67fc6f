"""Fine-tuning the language model with the task: the ``finetune:`` section of a task config.

The papers' second stage used the LM frozen (ProtTrans); ProteinLM and TAPE trained it together
with the head, and today's practice is parameter-efficient (LoRA, as biotrainer 2.x's
``finetuning_config`` and Schmirler et al. 2024). One setting chooses::

    finetune:
      method: lora          # none (frozen: embeddings computed once and cached) | full | lora | top
      lr: 1.0e-4            # the LM's learning rate (the head keeps train.lr)
      warmup_steps: 100     # linear warm-up of both learning rates, in optimizer steps
      batches_per_step: 1   # gradient accumulation: batches (per process) per optimizer step
      tokens_per_step: 0    # ... and at least this many residues (0: no residue budget)
      checkpointing: false  # activation checkpointing (less memory, more time)
      checkpoint_steps: 200 # optimizer steps between resume checkpoints (also one per epoch)
      max_padding: 0.1      # CPU: a batch runs through the LM as pieces of similar length (same numbers)
      precision: fp32       # or bf16: autocast, where the CPU (avx512_bf16 / amx_bf16) or GPU has it
      top_layers: 1         # method top: the last k layers are trained, the rest frozen
      lora_r: 8
      lora_alpha: 16
      lora_dropout: 0.05
      lora_target_modules: auto   # or a list of module names; auto: the family's attention projections
      lora_bias: none       # none | all | lora_only

How it runs (:func:`protlm.tasks.train.train`): the task's sets become
:class:`SequenceSet`s (sequences, not features); a batch is a :class:`TokenBatch` of
sequences (cropped to ``train.max_residues`` and to the model's position limit, the crop window
random in training, the first residues in the early-stopping validation); the model is
:class:`FinetunedModel` — the backend's trainable forward
(:meth:`protlm.embed.backend.TorchBackend.forward_tokens`) feeding the head — so every protocol
and head that trains by gradient works unchanged. LoRA is peft's (``get_peft_model``).

What training writes: the head folder gets ``lm/``, the fine-tuned LM — for ``lora`` the adapter
in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``, loadable with
``PeftModel.from_pretrained`` on the base model without protlm), for ``full``/``top`` a whole
model folder. Test sets are then scored by embedding them with ``lm/`` through the ordinary
batch runner (whole proteins, windows over position limits), exactly as ``protlm evaluate`` and
``protlm predict`` will; ``protlm embed --model HEAD/lm`` (or ``--model HEAD``) embeds with the
fine-tuned LM and ``protlm finetune-merge`` writes a LoRA model as one standalone folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from protlm.embed.backend import TorchBackend
from protlm.embed.precision import bf16_capable as probe_bf16
from protlm.embed.registry import resolve
from protlm.embed.spec import EmbedderSpec
from protlm.errors import ConfigError
from protlm.tasks.config import UNNAMING_TRAIN_SETTINGS
from protlm.tasks.features import FeatureSet

log = logging.getLogger("protlm.tasks")

METHODS = ("none", "full", "lora", "top")
LORA_BIAS = ("none", "all", "lora_only")
LM_FOLDER = "lm"
PRECISIONS = ("fp32", "bf16")


@dataclass
class FinetuneConfig:
    method: str = "none"  # none | full | lora | top
    lr: float = 1e-4  # the LM's learning rate (the head's is train.lr)
    weight_decay: float = 0.0  # the LM's weight decay
    warmup_steps: int = 0  # optimizer steps of linear warm-up (both learning rates)
    batches_per_step: int = 1  # batches (per process) accumulated into one optimizer step
    tokens_per_step: int = 0  # and at least this many residues (gradient accumulation to a budget); 0: no budget
    tokens_per_batch: int = 0  # padded residues the LM runs at once; bigger batches are cut (same gradient); 0: any
    max_padding: float = 0.1  # CPU: a batch runs as pieces of similar length, each at most this share padding
    precision: str = "fp32"  # fp32 | bf16 (autocast; on a CPU only where it has bf16 instructions)
    checkpointing: bool = False  # activation checkpointing in the LM
    checkpoint_steps: int = 200  # optimizer steps between resume checkpoints (and one at every epoch's end)
    top_layers: int = 1  # method top: how many of the last layers train
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: Any = "auto"  # auto | [module names]
    lora_bias: str = "none"  # none | all | lora_only

    @property
    def active(self) -> bool:
        return self.method != "none"

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"config finetune.{key}: {msg}")

        need(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, not {self.method!r}")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        need(self.tokens_per_step >= 0, "tokens_per_step", "must be >= 0")
        need(self.batches_per_step >= 1, "batches_per_step", "must be >= 1")
        need(self.tokens_per_batch >= 0, "tokens_per_batch", "must be >= 0")
        need(0 <= self.max_padding <= 1, "max_padding", "must be in [0, 1] (1: run every batch whole)")
        need(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}")
        need(self.top_layers >= 1, "top_layers", "must be >= 1")
        need(self.checkpoint_steps >= 1, "checkpoint_steps", "must be >= 1")
        need(self.lora_r >= 1, "lora_r", "must be >= 1")
        need(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)")
        need(self.lora_bias in LORA_BIAS, "lora_bias", f"must be one of {', '.join(LORA_BIAS)}")
        t = self.lora_target_modules
        need(t == "auto" or (isinstance(t, list) and t and all(isinstance(x, str) and x for x in t)),
             "lora_target_modules", "must be auto or a list of module names")


def build_finetune(tree: Any) -> FinetuneConfig:
    from protlm.configfile import build

    if tree is None:
        tree = {}
    if isinstance(tree, str):  # `finetune: lora` is the method alone
        tree = {"method": tree}
    if not isinstance(tree, dict):
        raise ConfigError(f"config finetune: must be a method name or a mapping, not {tree!r}")
    cfg = build(FinetuneConfig, tree, "finetune")
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- inputs and batches


class SequenceSet(FeatureSet):
    """A set's sequences in place of its features (``x[i]`` is the sequence); ``limit``: the
    longest window the LM takes (its position limit, or ``train.max_residues``), 0 = any."""

    def __init__(self, names: list[str], sequences: list[str], dim: int, limit: int = 0, where: str = "sequences"):
        super().__init__(list(names), [len(s) for s in sequences], dim, sequences.__getitem__, where)
        self.sequences = list(sequences)
        self.limit = int(limit)

    def __getitem__(self, i):  # type: ignore[override]
        return self.sequences[i]


class SequenceSource:
    """Stands where a :class:`~protlm.tasks.features.FeatureSource` stands when the LM trains:
    ``features()`` gives the sequences themselves."""

    def __init__(self, dim: int, limit: int = 0):
        self.dim = dim
        self.limit = limit

    def features(self, ids, sequences, written=None, progress=None, where: str = "", pool=None) -> SequenceSet:
        return SequenceSet(list(ids), list(sequences), self.dim, self.limit, where or "sequences")


class TokenBatch:
    """The sequences of one batch (what :class:`FinetunedModel` reads in place of a feature tensor)."""

    def __init__(self, seqs: list[str]):
        self.seqs = seqs
        self.shape = (len(seqs), max((len(s) for s in seqs), default=0))


def sequence_batch(x: SequenceSet, idx: list[int], crop: int = 0, rng: np.random.Generator | None = None):
    """(TokenBatch, mask, windows) of the proteins ``idx``: a random window of at most ``crop``
    residues in training (``rng`` given), the first ``limit`` residues otherwise."""
    limits = [c for c in (crop, x.limit) if c]
    cap = min(limits) if limits else 0
    windows = []
    for i in idx:
        n = int(x.lengths[i])
        if cap and n > cap:
            s = int(rng.integers(0, n - cap + 1)) if rng is not None else 0
            windows.append(slice(s, s + cap))
        else:
            windows.append(slice(0, n))
    seqs = [x[i][w] for i, w in zip(idx, windows)]
    width = max(len(s) for s in seqs)
    mb = torch.zeros((len(idx), width), dtype=torch.float32)
    for row, s in enumerate(seqs):
        mb[row, :len(s)] = 1.0
    return TokenBatch(seqs), mb, windows


# --------------------------------------------------------------------------- the model


def length_groups(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Positions grouped by length (shortest first): a group grows while its padded size stays
    within ``1 / (1 − max_padding)`` of its residues, i.e. at most that share is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    limit = 1.0 / (1.0 - max_padding) if max_padding < 1 else float("inf")
    groups: list[list[int]] = []
    for i in order:
        if groups:
            g = groups[-1]
            real = sum(lengths[j] for j in g) + lengths[i]
            if (len(g) + 1) * lengths[i] <= limit * real:
                g.append(i)
                continue
        groups.append([i])
    return groups


def bf16_capable(device: str) -> tuple[bool, str]:
    """Whether bf16 autocast is fast here, and the reason when it is not (protlm.embed.precision's probe)."""
    ok, why = probe_bf16(device)
    if ok or device.startswith("cuda"):
        return ok, why
    return ok, f"{why}: use finetune.precision fp32"


class FinetunedModel(torch.nn.Module):
    """The LM's trainable forward feeding the head: ``model(TokenBatch, mask)`` → the head's logits.

    ``lm`` is registered as a submodule, so ``parameters()``, ``train()`` and ``eval()`` cover both;
    the head runs on the LM's device and its outputs come back to the CPU, where the protocols
    keep their targets. On a CPU, a batch of a family that pays for padding (the transformers) is run
    through the LM as pieces of similar length (``max_padding``), re-padded for the head: the same
    numbers and one backward pass, without the padding's work (benchmarks/bench_finetune.py).
    ``precision: bf16`` runs the LM under bf16 autocast (the head and the loss stay fp32)."""

    def __init__(self, backend: TorchBackend, head: torch.nn.Module, layer: int = -1, max_padding: float = 1.0,
                 precision: str = "fp32"):
        super().__init__()
        self.backend = backend
        self.lm = backend.module
        self.head = head.to(torch.device(backend.device))
        self.layer = layer
        cpu = torch.device(backend.device).type == "cpu"
        self.max_padding = max_padding if (cpu and getattr(backend, "equal_length_on_cpu", False)) else 1.0
        self.precision = precision

    def _states(self, seqs: list[str]) -> torch.Tensor:
        groups = length_groups([len(s) for s in seqs], self.max_padding) if self.max_padding < 1 else [list(
            range(len(seqs)))]
        if len(groups) == 1:
            return self.backend.forward_tokens(seqs, layers=(self.layer,)).hidden[self.layer]
        width = max(len(s) for s in seqs)
        parts, order = [], []
        for g in groups:
            h = self.backend.forward_tokens([seqs[i] for i in g], layers=(self.layer,)).hidden[self.layer]
            parts.append(torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])))
            order += g
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(parts, 0).index_select(0, inverse.to(parts[0].device))

    def residue_states(self, xb: "TokenBatch") -> torch.Tensor:
        """The LM's states of a batch of sequences (B × L × D float32, padded, on the LM's device),
        with gradients when training: what a protocol whose head is not ``head(x, mask)`` (the pair
        heads) feeds its head itself."""
        if not isinstance(xb, TokenBatch):
            raise TypeError("FinetunedModel reads TokenBatch inputs (sequences), not features")
        device = torch.device(self.backend.device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            x = self._states(xb.seqs)
        return x.float()

    def forward(self, xb, mb: torch.Tensor) -> list[torch.Tensor]:
        x = self.residue_states(xb)
        return [o.to("cpu") for o in self.head(x, mb.to(x.device))]


# --------------------------------------------------------------------------- preparing the LM


def trainable_lm(spec: EmbedderSpec, ft: FinetuneConfig) -> TorchBackend:
    """The embedder of ``spec`` as a backend made ready for ``ft.method`` (parameters frozen or
    not, LoRA adapters injected, checkpointing on)."""
    if spec.options.int8:
        raise ConfigError("config finetune: an int8 model cannot be trained; drop embedder.int8")
    backend = resolve(spec.name, spec.options)
    if not isinstance(backend, TorchBackend):
        raise ConfigError(f"config finetune.method {ft.method}: embedder {spec.name} is not a torch language model "
                          f"(one-hot, BLOSUM, k-mers, profiles and HDF5 files have nothing to fine-tune); use "
                          f"finetune.method none")
    if ft.precision == "bf16":
        ok, why = bf16_capable(backend.device)
        if not backend.autocast_bf16:
            ok, why = False, (f"{backend.family}'s trainable forward computes in fp32 (a hand-written recurrent "
                              f"scan); use finetune.precision fp32")
        if not ok:
            raise ConfigError(f"config finetune.precision bf16: {why}")
    module = backend.module
    if ft.checkpointing:
        backend.enable_checkpointing()
    for p in module.parameters():
        p.requires_grad_(ft.method == "full")
    if ft.method == "top":
        blocks = backend.blocks()
        if ft.top_layers > len(blocks):
            raise ConfigError(f"config finetune.top_layers: {ft.top_layers}, but {spec.name} has {len(blocks)} layers")
        for block in blocks[-ft.top_layers:]:
            for p in block.parameters():
                p.requires_grad_(True)
    elif ft.method == "lora":
        from peft import LoraConfig, get_peft_model

        auto = backend.lora_targets()  # a ConfigError for a family without LoRA (UniRep), whatever the targets
        targets = auto if ft.lora_target_modules == "auto" else list(ft.lora_target_modules)
        lcfg = LoraConfig(r=ft.lora_r, lora_alpha=ft.lora_alpha, lora_dropout=ft.lora_dropout,
                          target_modules=targets, bias=ft.lora_bias)
        try:
            backend.module = get_peft_model(module, lcfg)
        except ValueError as exc:  # no module of those names
            raise ConfigError(f"config finetune.lora_target_modules: {str(exc).splitlines()[0][:200]}") from None
    return backend


def parameter_counts(module: torch.nn.Module) -> dict:
    total = sum(p.numel() for p in module.parameters())
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"lm_parameters": int(total), "lm_trained_parameters": int(trained)}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of what training changes (the best epoch's weights): for a fine-tuned model every
    parameter that requires grad and the head's buffers (a copy of a frozen LM would only cost
    memory); for a head alone, its whole state."""
    if not isinstance(model, FinetunedModel):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()
            if k in trained or k.startswith("head.")}


def save_lm(backend: TorchBackend, ft: FinetuneConfig, base: str, folder: Path) -> None:
    """Write the fine-tuned LM to ``folder`` (to ``folder.tmp``, then renamed): peft's adapter
    format for LoRA (with the base model's absolute path, so plain peft finds it), a whole model
    folder otherwise."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if ft.method == "lora":
        module = backend.module
        base_path = Path(base)
        for cfg in module.peft_config.values():
            cfg.base_model_name_or_path = str(base_path.resolve()) if base_path.exists() else base
        module.save_pretrained(str(tmp), safe_serialization=True)
    else:
        backend.save_lm(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def finetuned_embedder(config_embedder: Any, folder: Path) -> dict:
    """The task config's embedder spec with its name replaced by the fine-tuned LM's folder."""
    from protlm.embed.spec import parse_spec

    spec = parse_spec(config_embedder, "embedder")
    return {"name": str(folder), **dataclasses.asdict(spec.options)}


def lm_folder_of(path: str | Path) -> Path | None:
    """``HEAD`` (a head folder of a fine-tuned LM) → ``HEAD/lm``; else None."""
    path = Path(path)
    head = path / "head.json"
    if head.is_file() and (path / LM_FOLDER).is_dir():
        try:
            info = json.loads(head.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(info, dict) and isinstance(info.get("finetune"), dict):
            return path / LM_FOLDER
    return None


def warmup_factor(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def optimizer_for(model: torch.nn.Module, head_lr: float, head_wd: float, ft: FinetuneConfig | None):
    """AdamW with the head's and the LM's parameters as two groups (each its own rate)."""
    if ft is None or not isinstance(model, FinetunedModel):
        return torch.optim.AdamW(model.parameters(), lr=head_lr, weight_decay=head_wd)
    lm = [p for p in model.lm.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": head_lr, "weight_decay": head_wd, "name": "head"}]
    if lm:
        groups.append({"params": lm, "lr": ft.lr, "weight_decay": ft.weight_decay, "name": "lm"})
    opt = torch.optim.AdamW(groups)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


def split_batch(batch: tuple, parts: int = 2) -> list[tuple]:
    """A training batch ``(idx, TokenBatch, mask, windows)`` cut into ``parts`` batches of
    consecutive proteins (each padded only to its own longest protein)."""
    idx, tokens, mb, windows = batch
    n = len(idx)
    bounds = [round(k * n / parts) for k in range(parts + 1)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        if b <= a:
            continue
        seqs = tokens.seqs[a:b]
        width = max(len(x) for x in seqs)
        out.append((idx[a:b], TokenBatch(seqs), mb[a:b, :width], windows[a:b]))
    return out


def to_budget(batch: tuple, tokens: int) -> list[tuple]:
    """The batch cut into consecutive pieces of at most ``tokens`` padded residues (0: whole)."""
    if not tokens or not isinstance(batch[1], TokenBatch):
        return [batch]
    seqs = batch[1].seqs
    pieces, start, width = [], 0, 0
    for i, s in enumerate(seqs):
        width_i = max(width, len(s))
        if i > start and width_i * (i - start + 1) > tokens:
            pieces.append((start, i))
            start, width_i = i, len(s)
        width = width_i
    pieces.append((start, len(seqs)))
    if len(pieces) == 1:
        return [batch]
    idx, tb, mb, windows = batch
    out = []
    for a, b in pieces:
        part = tb.seqs[a:b]
        w = max(len(x) for x in part)
        out.append((idx[a:b], TokenBatch(part), mb[a:b, :w], windows[a:b]))
    return out


def batch_residues(batch: Sequence) -> int:
    """Residues in a training batch ``(idx, TokenBatch, mask, windows)``: its mask's sum."""
    return int(batch[2].sum().item())


# --------------------------------------------------------------------------- exact resume

STATE_FOLDER = "train-state"
#: where earlier versions kept a fine-tuning run's checkpoint: still found and resumed
LEGACY_STATE_FOLDER = "finetune-state"


def state_folder(out: Path) -> Path | None:
    """The resume checkpoint folder of an interrupted run in ``out`` (its ``.old`` twin when a
    crash fell between the two renames of :meth:`RunState.save`), or None."""
    for name in (STATE_FOLDER, LEGACY_STATE_FOLDER):
        for folder in (Path(out) / name, Path(out) / (name + ".old")):
            if folder.is_dir():
                return folder
    return None


class RunState:
    """The checkpoint of a training run, for an exact resume after a kill (even ``kill -9``):
    fine-tuning runs, and heads on frozen features (written at an epoch's end once
    ``every_seconds`` have passed since the last one, so a head that trains in seconds writes none).

    ``OUT/train-state/`` holds ``state.safetensors`` (the trained parameters, the optimizer's
    moments, the best epoch's weights, torch's RNG state) and ``state.json`` (epoch, batches done
    in it, the numpy RNG state at the epoch's start, optimizer steps, history, early-stopping
    counters, and ``run``: a digest of the config and the base model, so a resume with other
    settings is refused). It is written at the end of every epoch and every ``every`` optimizer
    steps (never inside a gradient accumulation), to a new folder that replaces the old one by
    renames; it is removed when the head folder is complete. A resume replays the epoch's batch
    order from the saved RNG state and skips the batches already done, so it reproduces the
    uninterrupted run's weights.
    """

    def __init__(self, out: Path, run_id: str, every: int = 200, every_seconds: float = 0.0,
                 files: list[str] | None = None):
        self.out = Path(out)
        self.folder = self.out / STATE_FOLDER
        self.run_id = run_id
        self.files = files  # content digests of the training and validation files (a resume refuses others)
        self.every = every  # optimizer steps between checkpoints inside an epoch (fine-tuning)
        self.every_seconds = every_seconds  # heads on frozen features: at an epoch's end, this often at most
        self.last = time.monotonic()

    def exists(self) -> bool:
        return state_folder(self.out) is not None

    def due(self, finished: bool) -> bool:
        """Whether an epoch-end checkpoint is written now (always for the run's last one)."""
        return finished or time.monotonic() - self.last >= self.every_seconds

    def clear(self) -> None:
        for name in (STATE_FOLDER, LEGACY_STATE_FOLDER):
            for suffix in ("", ".old", ".tmp"):
                shutil.rmtree(self.out / (name + suffix), ignore_errors=True)

    def save(self, model: torch.nn.Module, opt, best_state: dict | None, meta: dict, torch_rngs: list) -> None:
        from safetensors.torch import save_file

        from protlm.io.atomic import json_bytes

        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in trainable_state(model).items()}
        if best_state is not None:
            tensors.update({f"best.{k}": v.contiguous().cpu() for k, v in best_state.items()})
        opt_state = opt.state_dict()
        for idx, st in opt_state["state"].items():
            for key, value in st.items():
                tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).contiguous().cpu()
        for r, value in enumerate(torch_rngs):  # one per torchrun process (dropout differs between them)
            tensors[f"rng.torch.{r}"] = value
        groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
        doc = {**meta, "run": self.run_id, "param_groups": groups, "has_best": best_state is not None}
        if self.files is not None:
            doc["files"] = self.files
        tmp = self.folder.with_name(STATE_FOLDER + ".tmp")
        old = self.folder.with_name(STATE_FOLDER + ".old")
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_bytes(json_bytes(doc))
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if self.folder.is_dir():
                shutil.rmtree(old, ignore_errors=True)
                self.folder.rename(old)
            tmp.rename(self.folder)
            shutil.rmtree(old, ignore_errors=True)
            for suffix in ("", ".old"):  # a legacy checkpoint this resumed run has now replaced
                shutil.rmtree(self.out / (LEGACY_STATE_FOLDER + suffix), ignore_errors=True)
            self.last = time.monotonic()
        except BaseException:  # Ctrl-C, SIGTERM, a full disk: the last whole checkpoint stays in place
            shutil.rmtree(tmp, ignore_errors=True)
            if not self.folder.is_dir() and old.is_dir():
                old.rename(self.folder)
            raise

    def load(self, model: torch.nn.Module, opt, rank: int = 0) -> dict:
        """Restore the model's trained parameters and the optimizer; returns the saved meta with
        ``best_state`` (or None) and ``torch_rng``."""
        from safetensors.torch import load_file

        folder = state_folder(self.out) or self.folder
        try:
            doc = json.loads((folder / "state.json").read_text(encoding="utf-8"))
            tensors = load_file(str(folder / "state.safetensors"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--resume: the training checkpoint in {folder} is not readable ({exc}); start again "
                              f"with --overwrite") from None
        if doc.get("run") != self.run_id:
            raise ConfigError(f"--resume: {folder} was written by a run with another config or base model; start "
                              f"again with --overwrite (or resume with the same settings)")
        if self.files is not None and doc.get("files") is not None and doc["files"] != self.files:
            # checkpoints written before protlm recorded the files carry none: those resume as before
            raise ConfigError(f"--resume: a training or validation file was rewritten since {folder} was written "
                              f"(its contents differ); the run cannot continue on other data: start again with "
                              f"--overwrite, or put the old file back")
        own = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        missing = set(trainable_state(model)) - set(own)
        if missing:
            raise ConfigError(f"--resume: the checkpoint in {folder} lacks {len(missing)} trained tensors; start again "
                              f"with --overwrite")
        model.load_state_dict(own, strict=False)
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
        doc["best_state"] = ({k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
                             if doc.get("has_best") else None)
        if f"rng.torch.{rank}" not in tensors:
            raise ConfigError(f"--resume: {folder} was written by a run with fewer processes; resume with as many "
                              f"processes as it had ({sum(k.startswith('rng.torch.') for k in tensors)})")
        doc["torch_rng"] = tensors[f"rng.torch.{rank}"]
        return doc


def changed_settings(section) -> dict:
    """The fields of a settings dataclass that differ from their defaults: what names a run, so a
    setting added later with a default that keeps the old behaviour leaves old runs resumable."""
    default = type(section)()
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
            if getattr(section, f.name) != getattr(default, f.name)}


def training_file_digests(config, data_dir=None) -> list[str]:
    """XXH3 of the content of every file the training and validation sets are read from (sets of
    ``protlm datasets`` and files of the benchmark data folder are left out: those do not change):
    part of a suite head's digest, and checked when a run resumes."""
    import inspect

    from protlm.io.checksums import xxh3_file

    method = config.protocol_obj.training_files
    # a protocol written before data_dir was passed (a plug-in's; tests/toys/toy_pair_protocol.py) takes config only
    takes_dir = len(inspect.signature(method).parameters) >= 2
    files = method(config, data_dir) if takes_dir else method(config)
    return [xxh3_file(path) for path in files if Path(path).is_file()]


def run_digest(config, base_fingerprint: str) -> str:
    import hashlib

    tree = config.as_dict()
    tree["train"] = {k: v for k, v in changed_settings(config.train).items() if k not in UNNAMING_TRAIN_SETTINGS}
    tree["finetune"] = changed_settings(config.finetune)
    if isinstance(tree.get("data"), dict):  # test sets are scored after training: not part of the run
        tree["data"] = {k: v for k, v in tree["data"].items() if k != "test"}
    tree.pop("evaluate", None)
    text = json.dumps({"config": tree, "base": base_fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- merge


def _check_finite_weights(folder: Path, source) -> None:
    """A merged model whose weights hold NaN or inf (a diverged or damaged adapter) is not written."""
    from safetensors import safe_open

    from protlm.errors import InputError

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise InputError(f"finetune-merge {source}: the merged weight {name} holds NaN or inf values (a "
                                     f"diverged or damaged adapter); nothing was written")


def merge_adapter(source: str | Path, out: str | Path) -> dict:
    """``protlm finetune-merge``: a LoRA adapter (or a head folder holding one) merged into its
    base model, written as one standalone model folder (``from_pretrained`` loads it without peft)."""
    from protlm.embed.backends.adapter import ADAPTER_CONFIG, adapter_backend
    from protlm.embed.spec import EmbedOptions
    from protlm.errors import InputError

    source = Path(source)
    folder = lm_folder_of(source) or source
    if not (folder / ADAPTER_CONFIG).is_file():
        if (folder / "config.json").is_file():
            raise InputError(f"finetune-merge {source}: already a whole model folder (a full or top fine-tune); use "
                             f"it as it is with --model {folder}")
        raise InputError(f"finetune-merge {source}: not a LoRA adapter folder ({ADAPTER_CONFIG}) nor a head folder "
                         f"holding one in {LM_FOLDER}/")
    from protlm.io.atomic import publish_folder
    from protlm.io.outputs import check_apart

    backend = adapter_backend(str(folder), EmbedOptions(device="cpu"))
    out = Path(out)
    # --out is replaced whole: never the adapter, its head folder or its base model, nor a folder holding them
    check_apart(out, [source, folder, backend.base], holds=True)
    import uuid

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")  # its own: nobody else's is removed
    tmp.mkdir(parents=True)
    try:
        backend.save_lm(tmp)
        _check_finite_weights(tmp, source)
        if out.exists():
            shutil.rmtree(out)
        publish_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "adapter": str(folder), "base": backend.base, "fingerprint": backend.fingerprint()}
