"""Pretraining configuration: small typed dataclasses loaded from YAML, every field validated.

A config has four sections (see ``configs/pretrain/*.yaml``)::

    model:      architecture, size preset and shape overrides       (ModelSpec)
    data:       prepared shards and the validation subset           (DataConfig)
    objective:  masking rates                                       (ObjectiveConfig)
    optimizer:  LAMB/AdamW, learning-rate schedule, clipping        (OptimizerConfig)
    train:      curriculum phases, batching, precision, parallelism (TrainConfig)

``key=value`` overrides (``train.phases.0.steps=200``, ``model.preset=small``) are applied to the
YAML before validation, so an override is checked exactly like the file. Any error names the
field: ``protlm: error: config train.phases[0].tokens_per_batch: must be a positive integer``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from protlm.configfile import build, load_tree
from protlm.errors import ConfigError
from protlm.models.architectures import PRESETS, ModelSpec, get_architecture


@dataclass
class DataConfig:
    shards: str = ""  # folder written by `protlm prepare`
    valid_sequences: int = 512  # validation subset size (first N of the valid split, fixed)
    valid_max_length: int = 0  # crop length for validation; 0: the current phase's max_length


@dataclass
class ObjectiveConfig:
    mask_probability: float = 0.15  # share of residues selected (MLM and T5)
    replace_mask: float = 0.8  # of the selected: replaced by the mask token (BERT 80/10/10)
    replace_random: float = 0.1  # of the selected: replaced by a random residue; the rest kept


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | lamb
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    min_lr_ratio: float = 0.1  # final learning rate as a share of lr
    clip_grad_norm: float = 1.0  # 0 disables clipping


@dataclass
class PhaseConfig:
    """One stage of the sequence-length curriculum."""

    steps: int = 100
    max_length: int = 512  # tokens per sequence including special tokens; longer ones are cropped
    tokens_per_batch: int = 8192  # padded tokens per micro-batch per process (the token budget)
    max_sequences: int = 0  # optional cap on sequences per micro-batch (0: none)


@dataclass
class TrainConfig:
    seed: int = 0
    phases: list[PhaseConfig] = field(default_factory=lambda: [PhaseConfig()])
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16 (bf16/fp16 are autocast, meant for GPUs)
    parallel: str = "ddp"  # ddp | fsdp (DDP only with several processes; FSDP under torchrun, also with one)
    activation_checkpointing: bool = False
    cpu_offload: bool = False  # FSDP parameter/gradient/optimizer offload to host memory
    compile: bool = False  # torch.compile the model (worth it for long runs; slow to start)
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    peak_flops: float = 0.0  # matmul ceiling for MFU; 0 measures it at start-up
    tensorboard: bool = True  # also log to TensorBoard when it is installed


@dataclass
class PretrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.train.phases)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, ignore: tuple[str, ...] = ("train.log_every", "train.eval_every", "train.save_every",
                                                     "train.keep_checkpoints", "train.tensorboard")) -> str:
        """Hash of everything that changes the training trajectory (resume refuses a mismatch)."""
        d = self.to_dict()
        for dotted in ignore:
            section, key = dotted.split(".")
            d[section].pop(key, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- resume

#: Settings that may change on ``--resume`` (the documented safe changes): the learning rate and
#: its schedule, clipping, and the length of the current and later curriculum phases (not of
#: phases already finished). Every change is recorded in metrics.jsonl and the checkpoints.
RESUME_ADJUSTABLE = ("optimizer.lr", "optimizer.warmup_steps", "optimizer.schedule", "optimizer.min_lr_ratio",
                     "optimizer.clip_grad_norm")
#: Settings that never change the trajectory (not compared on resume).
NOT_COMPARED = ("train.log_every", "train.eval_every", "train.save_every", "train.keep_checkpoints",
                "train.tensorboard")


def _flat(tree, prefix: str = "") -> dict:
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
    elif isinstance(tree, list) and tree and all(isinstance(v, dict) for v in tree):
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = list(tree) if isinstance(tree, tuple) else tree
    return out


def _same_folder(a, b) -> bool:
    """Two spellings of one folder (relative and absolute, a trailing slash)."""
    if a is None or b is None:
        return a == b
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return a == b


def resume_changes(old: PretrainConfig, new: PretrainConfig, step: int, *,
                   data_checked: bool = False) -> dict[str, list]:
    """``{key: [old, new]}`` of the settings that differ between the config a checkpoint was
    trained with and the one given on ``--resume`` at ``step``; a ConfigError names any change
    that is not allowed (see :data:`RESUME_ADJUSTABLE`).

    ``data.shards`` is a path, not the data: with ``data_checked`` (the checkpoint's data
    fingerprint matched the folder's content) it is not compared at all, so moved data resumes;
    for older checkpoints without a fingerprint it is compared as a resolved folder, not a string."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    changes = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and k not in NOT_COMPARED}
    if "data.shards" in changes and (data_checked or _same_folder(*changes["data.shards"])):
        del changes["data.shards"]
    refused = []
    if len(old.train.phases) != len(new.train.phases):
        refused.append(f"train.phases ({len(new.train.phases)} phases, the checkpoint's has {len(old.train.phases)})")
        changes = {k: v for k, v in changes.items() if not k.startswith("train.phases.")}
    else:
        # a phase boundary the run has already passed must not move (it decides past batches)
        old_end = new_end = 0
        for i, (po, pn) in enumerate(zip(old.train.phases, new.train.phases)):
            old_end, new_end = old_end + po.steps, new_end + pn.steps
            if old_end != new_end and min(old_end, new_end) < step:
                refused.append(f"train.phases.{i}.steps (the end of phase {i} would move from step "
                               f"{old_end} to {new_end}, and the run is at step {step})")
    refused += [k for k in changes if k not in RESUME_ADJUSTABLE and not re.fullmatch(r"train\.phases\.\d+\.steps", k)]
    if refused:
        raise ConfigError(
            f"--resume: the config differs from the checkpoint's in {', '.join(refused)}; on resume only "
            f"{', '.join(RESUME_ADJUSTABLE)} and the steps of unfinished phases may change "
            "(resume with the checkpoint's protlm_pretrain.yaml otherwise, or choose another --out)"
        )
    return changes


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> PretrainConfig:
    """Read and validate a config file (or a dict), then apply ``key=value`` overrides."""
    config = build(PretrainConfig, load_tree(path, overrides, data), "")
    validate(config)
    return config


def validate(c: PretrainConfig) -> None:
    def need(cond: bool, where: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"config {where}: {msg}")

    arch = get_architecture(c.model.arch)  # "config model.arch: unknown architecture …" (plug-ins loaded first)
    need(c.model.preset in PRESETS, "model.preset", f"unknown preset {c.model.preset!r}; choose one of {sorted(PRESETS)}")
    c.model.resolved()
    need(0 <= c.model.dropout < 1, "model.dropout", "must be in [0, 1)")
    need(0 <= c.model.attention_dropout < 1, "model.attention_dropout", "must be in [0, 1)")
    need(c.model.max_positions > 0, "model.max_positions", "must be positive")
    need(c.data.valid_sequences >= 0, "data.valid_sequences", "must be >= 0")
    need(c.data.valid_max_length == 0 or c.data.valid_max_length >= arch.vocab.n_special + 1,
         "data.valid_max_length", "must be 0 (the phase's max_length) or long enough for one residue")
    o = c.objective
    need(0 < o.mask_probability < 1, "objective.mask_probability", "must be in (0, 1)")
    need(0 <= o.replace_mask <= 1 and 0 <= o.replace_random <= 1 and o.replace_mask + o.replace_random <= 1,
         "objective.replace_mask", "replace_mask + replace_random must be within [0, 1]")
    opt = c.optimizer
    need(opt.name in ("adamw", "lamb"), "optimizer.name", f"must be adamw or lamb, not {opt.name!r}")
    need(opt.lr > 0, "optimizer.lr", "must be positive")
    need(all(0 <= b < 1 for b in opt.betas), "optimizer.betas", "both must be in [0, 1)")
    need(opt.eps > 0, "optimizer.eps", "must be positive")
    need(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    need(opt.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
    need(opt.schedule in ("linear", "cosine", "constant"), "optimizer.schedule", f"must be linear, cosine or constant, not {opt.schedule!r}")
    need(0 <= opt.min_lr_ratio <= 1, "optimizer.min_lr_ratio", "must be in [0, 1]")
    need(opt.clip_grad_norm >= 0, "optimizer.clip_grad_norm", "must be >= 0 (0 disables clipping)")
    t = c.train
    need(len(t.phases) >= 1, "train.phases", "must not be empty")
    for i, ph in enumerate(t.phases):
        w = f"train.phases[{i}]"
        need(ph.steps > 0, f"{w}.steps", "must be a positive integer")
        need(ph.max_length >= arch.vocab.n_special + 1, f"{w}.max_length", "too short for one residue plus special tokens")
        need(ph.tokens_per_batch >= ph.max_length, f"{w}.tokens_per_batch",
             f"must be at least max_length ({ph.max_length}) so that one full-length sequence fits")
        need(ph.max_sequences >= 0, f"{w}.max_sequences", "must be >= 0")
        if arch.position_table:
            need(max(ph.max_length, c.data.valid_max_length) <= c.model.max_positions, f"{w}.max_length",
                 f"exceeds model.max_positions={c.model.max_positions} (absolute position embeddings)")
    need(0 <= t.seed < 2**63, "train.seed", "must be an integer in [0, 2^63)")  # numpy and torch generators
    need(t.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(t.precision in ("fp32", "bf16", "fp16"), "train.precision", f"must be fp32, bf16 or fp16, not {t.precision!r}")
    need(t.parallel in ("ddp", "fsdp"), "train.parallel", f"must be ddp or fsdp, not {t.parallel!r}")
    need(not t.cpu_offload or t.parallel == "fsdp", "train.cpu_offload", "needs train.parallel: fsdp")
    need(not t.activation_checkpointing or arch.supports_activation_checkpointing, "train.activation_checkpointing",
         f"transformers' {arch.model_class} does not support gradient checkpointing")
    for name in ("log_every", "eval_every", "save_every", "keep_checkpoints"):
        need(getattr(t, name) >= 1, f"train.{name}", "must be >= 1")
    need(t.peak_flops >= 0, "train.peak_flops", "must be >= 0 (0 measures it)")
