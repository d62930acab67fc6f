"""The pretraining loop: one code path for one CPU, one GPU and many nodes under ``torchrun``.

Per optimizer step every process builds its ``grad_accum`` micro-batches (see
:mod:`protlm.pretrain.batching` for which ones), the number of target tokens of the whole global
batch is summed across processes first, and each micro-batch's summed loss is divided by that
global count. The gradient is therefore exactly the gradient of the mean loss over the global
batch, whatever the split over processes and accumulation steps (the DDP test checks this).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from protlm.data.shards import ShardedDataset
from protlm.errors import ConfigError, InputError, ProtlmError, Terminated
from protlm.io.atomic import fsync_dir, fsync_tree
from protlm.io.outputs import output_lock
from protlm.models.architectures import build_model, count_parameters, get_architecture
from protlm.pretrain import checkpoint as ckpt
from protlm.pretrain.batching import BatchPlan
from protlm.pretrain.config import PretrainConfig, load_config, resume_changes
from protlm.pretrain.distributed import DistEnv, all_reduce_sum, destroy, init_distributed, no_sync, wrap_model
from protlm.pretrain.metrics import MetricsLog, measure_peak_flops, training_flops
from protlm.pretrain.objectives import IGNORE, Batch, make_batch
from protlm.pretrain.optim import build_optimizer, build_scheduler, lr_factor

log = logging.getLogger("protlm.pretrain")


class TrainingDiverged(ProtlmError):
    """The loss or the gradient became NaN/inf."""


def data_fingerprint(manifest: dict) -> str:
    """Hash of what a prepared folder holds: its shard lists (file names, record and residue counts,
    and the XXH3-128 of every shard file that ``protlm prepare`` records), not its path nor the
    time it was prepared. Recorded in every checkpoint; ``--resume`` refuses other data in the
    same folder (re-prepared from another FASTA), and accepts the same data under another path."""
    splits = {split: manifest["splits"][split]["shards"] for split in ("train", "valid")}
    return hashlib.sha256(json.dumps(splits, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _exp(x: float) -> float:
    """Perplexity from a mean loss: inf (not an OverflowError) for a diverging model."""
    return math.exp(x) if x < 709.0 else math.inf


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the positions with a target (fp32 whatever the autocast)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


@dataclass
class _Phase:
    index: int
    start: int  # first global step of the phase
    plan: BatchPlan


class Trainer:
    def __init__(self, config: PretrainConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True, env: DistEnv | None = None):
        self.config = config
        self.out = Path(out)
        self.env = env or init_distributed()
        self.progress = progress
        self.arch = get_architecture(config.model.arch)
        self.vocab = self.arch.vocab
        self.shape = config.model.resolved()
        self._stop_signal: int | None = None

        shards = Path(config.data.shards) if config.data.shards else None
        if shards is None:
            raise ConfigError("config data.shards: required (a folder written by `protlm prepare`)")
        if not (shards / "manifest.json").exists():
            raise ConfigError(f"config data.shards: {shards} has no manifest.json; run `protlm prepare` first")
        _check_out_apart(self.out, shards)  # also for library use (pretrain() checks before making --out)
        self.train_data = ShardedDataset(shards, "train")
        if len(self.train_data) == 0:
            raise ConfigError(f"config data.shards: {shards} has no training sequences")
        self.valid_data = ShardedDataset(shards, "valid")
        if config.data.valid_sequences and len(self.valid_data) == 0 and self.env.is_main:
            log.warning("config data.valid_sequences: %s has no validation sequences, so this run reports no "
                        "validation loss and writes no best checkpoint (prepare with a larger --valid-fraction, "
                        "or set data.valid_sequences=0)", shards)
        self.data_fingerprint = data_fingerprint(self.train_data.manifest)

        self.existing = ckpt.latest_checkpoint(self.out)
        if self.existing is not None and not resume:
            raise ConfigError(
                f"{self.out} already holds a checkpoint ({self.existing.name}); pass --resume to continue it "
                f"or choose another --out"
            )
        if self.existing is None and ((self.out / "metrics.jsonl").exists() or (self.out / "model").exists()):
            raise ConfigError(
                f"{self.out} already holds another run's output (metrics.jsonl or model/) but no checkpoint to "
                f"resume: that run stopped before its first checkpoint, or is still running; choose another --out "
                f"(or remove the folder to start over)"
            )
        if resume and self.existing is None:
            # like `protlm train --resume`: a mistyped --out must not silently start a new run
            where = "no checkpoint (checkpoints/latest)" if self.out.is_dir() else "no such folder"
            raise InputError(f"--out {self.out}: {where}; nothing to resume (leave out --resume to start a new run)")

        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model).to(self.env.device)
        for p in self.arch.unused_parameters(self.model):
            p.requires_grad_(False)  # e.g. ESM's contact head: MLM never trains it, DDP must not wait for it
        self.params = count_parameters(self.model)
        # the family's own FLOP-count arguments (Transformer-XL: segment length, memory), from its config
        self.flop_arguments = self.arch.flop_arguments(self.model.config)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.precision)
        if self.autocast_dtype is not None and self.env.device.type != "cuda" and config.train.precision == "fp16":
            raise ConfigError("config train.precision: fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
        if config.train.cpu_offload and self.env.device.type != "cuda":
            raise ConfigError("config train.cpu_offload: moves a GPU's parameters, gradients and optimizer state to "
                              "host memory; on the CPU they are in host memory already (leave it off)")
        fsdp_mp = self.autocast_dtype if (config.train.parallel == "fsdp" and self.env.distributed) else None
        self.wrapped = wrap_model(self.model, config.train, self.env, fsdp_mp)
        self.forward_module = torch.compile(self.wrapped, dynamic=True) if config.train.compile else self.wrapped
        self.optimizer = build_optimizer(self.model, config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config.optimizer, config.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if config.train.precision == "fp16" else None

        self.step = 0
        self.tokens_seen = 0
        self.flops_seen = 0.0
        self.config_changes: list[dict] = []
        best = ckpt.best_checkpoint(self.out) if self.existing is not None else None
        self.best_val = float(best[1].get("val_loss", math.inf)) if best else math.inf
        self.config_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)
        if self.existing is not None:
            # damaged files are one "damaged checkpoint" line, not a divergence a step later
            ckpt.verify_checkpoint(self.existing)
            self._refuse_other_config()  # before any weight is loaded into a model of another shape
            state = ckpt.load_checkpoint(self.existing, self.wrapped, self.optimizer, self.scheduler, self.env)
            changes = self._resume_changes(state)
            # every resume with changed settings, in order: kept in each later checkpoint
            self.config_changes = [*state.get("config_changes", []),
                                   *([{"step": int(state["step"]), "changes": changes}] if changes else [])]
            self.step = int(state["step"])
            self.tokens_seen = int(state["tokens_seen"])
            self.flops_seen = float(state.get("flops_seen", 0.0))

        self.phases: list[_Phase] = []
        start = 0
        for i, ph in enumerate(config.train.phases):
            plan = BatchPlan(self.train_data.lengths, max_length=ph.max_length, n_special=self.vocab.n_special,
                             tokens_per_batch=ph.tokens_per_batch, max_sequences=ph.max_sequences,
                             seed=config.train.seed, phase=i)
            self.phases.append(_Phase(i, start, plan))
            start += ph.steps
        self.metrics = MetricsLog(self.out, enabled=self.env.is_main, tensorboard=config.train.tensorboard)
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.metrics.truncate_after(self.step)
        self.peak_flops = config.train.peak_flops or measure_peak_flops(self.env.device)

    # ------------------------------------------------------------------ helpers

    def phase_at(self, step: int) -> _Phase:
        current = self.phases[0]
        for ph in self.phases:
            if step >= ph.start:
                current = ph
        return current

    def _batch(self, phase: _Phase, indices: np.ndarray, rng: np.random.Generator, data: ShardedDataset,
               max_length: int | None = None, validation: bool = False) -> Batch:
        cfg = self.config
        ph = cfg.train.phases[phase.index]
        # Validation masks every selected residue: with BERT's 10% "keep" targets the input shows
        # the answer, and the perplexity would drop below what the model can actually predict.
        replace_mask = 1.0 if validation else cfg.objective.replace_mask
        replace_random = 0.0 if validation else cfg.objective.replace_random
        return make_batch([data[int(i)] for i in indices], self.arch.objective, self.vocab,
                          max_length=max_length or ph.max_length, mask_probability=cfg.objective.mask_probability,
                          replace_mask=replace_mask, replace_random=replace_random, rng=rng)

    def micro_batches(self, step: int) -> list[Batch]:
        phase = self.phase_at(step)
        accum, world, rank = self.config.train.grad_accum, self.env.world, self.env.rank
        out = []
        for a in range(accum):
            counter = (step - phase.start) * world * accum + rank * accum + a
            epoch, index, indices = phase.plan.get(counter)
            rng = np.random.default_rng([self.config.train.seed, phase.index, epoch, index, 1])
            out.append(self._batch(phase, indices, rng, self.train_data))
        return out

    def _forward(self, batch: Batch) -> torch.Tensor:
        inputs = {k: v.to(self.env.device, non_blocking=True) for k, v in batch.inputs.items()}
        if self.autocast_dtype is not None:
            with torch.autocast(self.env.device.type, dtype=self.autocast_dtype):
                return self.forward_module(**inputs).logits
        return self.forward_module(**inputs).logits

    def _flops(self, batch: Batch) -> float:
        return training_flops(batch.lengths, arch=self.arch, layers=self.shape["layers"], hidden=self.shape["hidden"],
                              ffn=self.shape["ffn"], vocab=self.vocab.size, **self.flop_arguments)

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict:
        batches = self.micro_batches(self.step)
        local_targets = sum(b.n_targets for b in batches)
        (global_targets,) = all_reduce_sum([local_targets], self.env)
        scale = self.env.world / max(global_targets, 1.0)
        self.wrapped.train()
        loss_sum = 0.0
        for k, batch in enumerate(batches):
            with no_sync(self.wrapped, active=k < len(batches) - 1):
                logits = self._forward(batch)
                loss = token_loss(logits, batch.labels.to(self.env.device))
                scaled = loss * scale
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            loss_sum += float(loss.detach())
        tokens = sum(b.n_tokens for b in batches)
        padded = sum(b.n_padded for b in batches)
        flops = sum(self._flops(b) for b in batches)
        total_loss, tokens, padded, flops = all_reduce_sum([loss_sum, tokens, padded, flops], self.env)
        mean_loss = total_loss / max(global_targets, 1.0)
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(self._diverged_message(f"the loss is {mean_loss}"))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.config.optimizer.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), clip if clip > 0 else float("inf"))
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skips the step on inf/NaN gradients (fp16 overflow)
            self.scaler.update()
        else:
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(self._diverged_message(f"the gradient norm is {grad_norm}"))
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        self.tokens_seen += int(tokens)
        self.flops_seen += flops
        return {"loss": mean_loss, "targets": global_targets, "tokens": tokens, "padded": padded,
                "flops": flops, "grad_norm": grad_norm, "lr": lr}

    def _refuse_other_config(self) -> None:
        """The one-line "config differs" refusal of :func:`resume_changes` for a changed model shape,
        architecture or optimizer, given before loading the checkpoint (whose weights and optimizer
        state would otherwise fail with a size mismatch or a KeyError)."""

        try:
            state = json.loads((self.existing / "trainer_state.json").read_text())
        except (OSError, ValueError):
            return  # load_checkpoint names the damaged checkpoint
        if not isinstance(state, dict):
            return
        recorded = state.get("data_fingerprint")
        if recorded is not None and recorded != self.data_fingerprint:
            raise ConfigError(
                f"--resume: {self.config.data.shards} holds other data than {self.existing} was trained on "
                f"(data fingerprint {self.data_fingerprint}, the checkpoint's {recorded}); resume with the data the "
                f"run was trained on, or choose another --out")
        if state.get("fingerprint") == self.config.fingerprint():
            return
        try:
            old = load_config(data=yaml.safe_load((self.existing / "protlm_pretrain.yaml").read_text()))
        except (OSError, yaml.YAMLError, ProtlmError) as exc:
            raise ConfigError(f"--resume: cannot read the config {self.existing} was trained with ({exc})") from None
        resume_changes(old, self.config, int(state.get("step", 0)), data_checked=recorded is not None)

    def _resume_changes(self, state: dict) -> dict:
        """Compare the config with the checkpoint's; apply the allowed changes (see
        :data:`protlm.pretrain.config.RESUME_ADJUSTABLE`) to the optimizer and schedule."""

        if state.get("fingerprint") == self.config.fingerprint():
            return {}
        try:
            old = load_config(data=yaml.safe_load((self.existing / "protlm_pretrain.yaml").read_text()))
        except (OSError, yaml.YAMLError, ProtlmError) as exc:
            raise ConfigError(f"--resume: cannot read the config {self.existing} was trained with ({exc})") from None
        step = int(state["step"])
        changes = resume_changes(old, self.config, step, data_checked="data_fingerprint" in state)
        if changes:
            lr, opt = self.config.optimizer.lr, self.config.optimizer
            factor = lr_factor(step, opt, self.config.total_steps)
            self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
            for group in self.optimizer.param_groups:
                group["initial_lr"] = lr
                group["lr"] = lr * factor
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
            log.warning("--resume at step %d with changed settings: %s", step,
                        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items()))
        return changes

    def _diverged_message(self, what: str) -> str:
        last = ckpt.latest_checkpoint(self.out)
        kept = f"the last checkpoint is {last}" if last else "no checkpoint had been written yet"
        best = ckpt.best_checkpoint(self.out)
        if best is not None:
            kept += (f"; the best-validation checkpoint is {best[0]} (step {best[1].get('step')}, validation "
                     f"loss {best[1].get('val_loss', float('nan')):.4g}; to resume from it, write `best` into "
                     f"{self.out / 'checkpoints' / 'latest'})")
        return (f"training diverged at step {self.step + 1}: {what}; stopped without saving, {kept}. "
                f"Rerun with --resume and a lower optimizer.lr (or a longer optimizer.warmup_steps, "
                f"optimizer.clip_grad_norm; allowed on resume and recorded), or use fp32/bf16")

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        n = min(self.config.data.valid_sequences, len(self.valid_data))
        if n == 0:
            return None
        phase = self.phase_at(max(self.step - 1, 0))
        ph = self.config.train.phases[phase.index]
        max_length = self.config.data.valid_max_length or ph.max_length
        plan = BatchPlan(self.valid_data.lengths[:n], max_length=max_length, n_special=self.vocab.n_special,
                         tokens_per_batch=ph.tokens_per_batch, max_sequences=ph.max_sequences,
                         seed=self.config.train.seed + 1, phase=phase.index)
        self.wrapped.eval()
        sums = [0.0, 0.0, 0.0, 0.0]  # eval loss, eval targets, full loss, full targets
        n_batches = plan.batches_per_epoch()
        rounds = -(-n_batches // self.env.world)
        for j in range(rounds):
            k = j * self.env.world + self.env.rank
            # Under FSDP every process must join every forward: a process without a batch of
            # its own in the last round runs batch 0 again and discards the result.
            real = k < n_batches
            if not real and not self.env.distributed:
                break
            _, _, indices = plan.get(k if real else 0)
            rng = np.random.default_rng([self.config.train.seed, 999, phase.index, k if real else 0])
            batch = self._batch(phase, indices, rng, self.valid_data, max_length, validation=True)
            logits = self._forward(batch)
            if not real:
                continue
            sums[0] += float(token_loss(logits, batch.eval_labels.to(self.env.device)))
            sums[1] += int((batch.eval_labels != IGNORE).sum())
            if batch.eval_labels is not batch.labels:
                sums[2] += float(token_loss(logits, batch.labels.to(self.env.device)))
                sums[3] += batch.n_targets
        loss, count, full, full_count = all_reduce_sum(sums, self.env)
        self.wrapped.train()
        val_loss = loss / max(count, 1)
        if not math.isfinite(val_loss) or _exp(val_loss) == math.inf:
            # over 709 nats per token the perplexity overflows a float: a uniform guess scores ln(V)
            raise TrainingDiverged(self._diverged_message(
                f"the validation loss is {val_loss:.4g} nats per token (a uniform guess gives "
                f"{math.log(self.vocab.size):.2f}; the perplexity overflows)"))
        out = {"kind": "valid", "step": self.step, "tokens_seen": self.tokens_seen,
               "flops_seen": self.flops_seen, "val_loss": val_loss,
               "val_ppl": _exp(val_loss), "val_targets": int(count)}
        if full_count:
            out["val_ppl_all_positions"] = _exp(full / full_count)
        return out

    # ------------------------------------------------------------------ loop

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def save(self, name: str | None = None, extra: dict | None = None) -> Path | None:
        state = {"tokens_seen": self.tokens_seen, "flops_seen": self.flops_seen, "fingerprint": self.config.fingerprint(),
                 "data_fingerprint": self.data_fingerprint,
                 "phase": self.phase_at(max(self.step - 1, 0)).index, "arch": self.config.model.arch,
                 **({"config_changes": self.config_changes} if self.config_changes else {}), **(extra or {})}
        return ckpt.save_checkpoint(self.out, self.step, self.wrapped, self.optimizer, self.scheduler, self.env,
                                    family=self.vocab.family, config_yaml=self.config_yaml, state=state,
                                    keep=self.config.train.keep_checkpoints, name=name)

    def _keep_if_best(self, evaluation: dict | None) -> None:
        """A new best validation loss: save it as ``checkpoints/best`` (outside rotation)."""
        if evaluation is None or not evaluation["val_loss"] < self.best_val:
            return
        self.best_val = evaluation["val_loss"]
        self.save(name="best", extra={"val_loss": evaluation["val_loss"], "val_ppl": evaluation["val_ppl"]})

    def run(self, until: int | None = None) -> dict:
        """Train to the end of the schedule (or stop with a checkpoint after step ``until``)."""
        cfg = self.config.train
        total = self.config.total_steps
        handlers = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        except ValueError:  # not the main thread
            handlers = {}
        bar = None
        if self.env.is_main and self.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc=f"pretrain {self.config.model.arch}", unit="step",
                       disable=None, dynamic_ncols=True)
        if self.env.is_main:
            self.metrics.write({"kind": "start", "step": self.step, "params": self.params["total"],
                                "params_non_embedding": self.params["non_embedding"], "world": self.env.world,
                                "parallel": self.config.train.parallel if self.env.distributed else "none",
                                "device": str(self.env.device), "peak_flops": self.peak_flops,
                                                "resumed_from": str(self.existing) if self.existing else None,
                                **({"config_changes": self.config_changes} if self.config_changes else {})})
        window = {"loss": 0.0, "targets": 0.0, "tokens": 0.0, "padded": 0.0, "flops": 0.0, "n": 0}
        t_window = time.perf_counter()
        last_eval = None
        interrupted = False
        try:
            while self.step < total:
                stats = self.train_step()
                window["loss"] += stats["loss"] * stats["targets"]
                for key in ("targets", "tokens", "padded", "flops"):
                    window[key] += stats[key]
                window["n"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == total:
                    dt = time.perf_counter() - t_window
                    loss = window["loss"] / max(window["targets"], 1.0)
                    record = {"kind": "train", "step": self.step, "phase": self.phase_at(self.step - 1).index,
                              "loss": loss, "ppl": math.exp(min(loss, 50.0)), "lr": stats["lr"],
                              "grad_norm": stats["grad_norm"], "tokens_seen": self.tokens_seen,
                              "flops_seen": self.flops_seen,
                              "tokens_per_s": window["tokens"] / dt,
                              "padding": 1 - window["tokens"] / max(window["padded"], 1.0),
                              "mfu": window["flops"] / dt / (self.peak_flops * self.env.world),
                              "elapsed_s": dt}
                    self.metrics.write(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                        mfu=f"{record['mfu']:.0%}")
                    window = {k: 0.0 for k in window}
                    window["n"] = 0
                    t_window = time.perf_counter()
                if self.step % cfg.eval_every == 0 or self.step == total:
                    t_eval = time.perf_counter()
                    last_eval = self.evaluate()
                    if last_eval is not None:
                        self.metrics.write(last_eval)
                        self._keep_if_best(last_eval)
                    t_window += time.perf_counter() - t_eval
                if self.step % cfg.save_every == 0 or self.step == total:
                    t_save = time.perf_counter()
                    self.save()
                    t_window += time.perf_counter() - t_save
                if until is not None and self.step >= until and self.step < total:
                    if self.step % cfg.save_every != 0:
                        self.save()
                    return {"out": str(self.out), "model": None, "steps": self.step,
                            "tokens_seen": self.tokens_seen, "params": self.params, "last_eval": last_eval}
                if self._stop_signal is not None:
                    if self.step % cfg.save_every != 0:
                        self.save()
                    interrupted = True
                    break
        finally:
            if bar is not None:
                bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.metrics.close()
        if interrupted:  # the CLI exits 143 for SIGTERM, 130 for Ctrl-C, as every other command
            raise Terminated() if self._stop_signal == signal.SIGTERM else KeyboardInterrupt()
        final = self.out / "model"
        if self.env.is_main:
            import shutil


            latest = ckpt.latest_checkpoint(self.out)
            tmp = self.out / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                # without the resume state, and without the checksums that list it
                shutil.copytree(latest, tmp, ignore=shutil.ignore_patterns("trainer_state.*", ckpt.CHECKSUMS))
                fsync_tree(tmp)
            except OSError as exc:  # a full disk: no half-copied .model.tmp left, one line naming the folder
                shutil.rmtree(tmp, ignore_errors=True)
                raise ProtlmError(f"{final}: cannot write the final model ({getattr(exc, 'strerror', None) or exc}); "
                                  f"the trained checkpoint {latest} is complete") from None
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            fsync_dir(self.out)
        return {"out": str(self.out), "model": str(final), "steps": self.step, "tokens_seen": self.tokens_seen,
                "params": self.params, "last_eval": last_eval}


def _check_out_apart(out: str | Path, shards: str | Path | None) -> None:
    """The output must not be, or lie inside, the prepared data folder it reads: checkpoints/,
    model/ and metrics.jsonl would be mixed into the data (and a re-prepare would remove them)."""
    from protlm.io.outputs import check_apart

    check_apart(out, [shards] if shards else [], what="the prepared data folder ")


def pretrain(config: PretrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict:
    """Train into ``out``. The main process holds the folder's lock for the whole run: a second
    ``protlm pretrain`` on the same folder stops at once, naming the process that holds it."""
    fsdp = config.train.parallel == "fsdp"
    env = init_distributed(one_process_group=fsdp)
    try:
        if fsdp and not env.distributed:
            if config.train.cpu_offload:
                raise ConfigError("train.cpu_offload: FSDP's offload needs torchrun's process group, also on one "
                                  "device: run `torchrun --nproc_per_node 1 -m protlm.cli.main pretrain …`")
            log.warning("train.parallel: fsdp in one process without torchrun: the model is trained unsharded "
                        "(start it with torchrun, even --nproc_per_node 1, to shard it)")
        with contextlib.ExitStack() as stack:
            if env.is_main:
                _check_out_apart(out, config.data.shards)
                if resume and not Path(out).is_dir():  # before it is made below
                    raise InputError(f"--out {out}: no such folder; nothing to resume (leave out --resume to "
                                     f"start a new run)")
                try:
                    Path(out).mkdir(parents=True, exist_ok=True)
                except OSError as exc:  # a file, a folder under a file, a read-only place
                    what = "is a file, not a folder" if Path(out).exists() else \
                        f"cannot create the output folder ({exc.strerror})"
                    raise InputError(f"--out {out}: {what}") from None
                stack.enter_context(output_lock(out, what="pretraining output"))
            return Trainer(config, out, resume=resume, progress=progress, env=env).run()
    finally:
        destroy(env)
