"""The one engine: train a head on embeddings, score it, save it, use it — for every protocol.

``protlm train / evaluate / predict`` (and the suite, :mod:`protlm.tasks.suite`) call
:func:`train`, :func:`evaluate` and :func:`predict` here, and these only call the config's
protocol (:mod:`protlm.tasks.protocols`) and head (:mod:`protlm.tasks.heads`): no code here knows
which protocol it runs.

Training follows the papers' second stage: the LM is frozen (its embeddings are computed once,
see :mod:`protlm.tasks.features`), a small head is trained with AdamW on the training split,
the protocol's validation value (the loss, or contacts' P@L/5) decides early stopping (the best
epoch's weights are kept), and test sets are only scored, never used for a decision.

A trained head is a folder, the same for every protocol and head: ``head.json`` (the config,
what decoding needs — classes, normalisation, … —, the input width, the embedder's identity,
the training history, protlm's version), ``head.safetensors`` (the weights, never pickle) and
``metrics.json`` (validation and test metrics with bootstrap CIs), and ``per_protein.json`` (the
test sets' per-protein values, :mod:`protlm.tasks.perprotein`). Each file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from protlm import __version__
from protlm.embed.runner import is_oom
from protlm.embed.spec import parse_spec
from protlm.errors import InputError, ProtlmError
from protlm.io.atomic import json_bytes, write_bytes, write_with_path
from protlm.io.checksums import sha256_file
from protlm.io.processes import all_reduce_sum, barrier, destroy, gather_objects, init_distributed
from protlm.tasks import headfile, perprotein
from protlm.tasks.build import build_task_config, data_files
from protlm.tasks.config import TaskConfig
from protlm.tasks.features import FeatureSource, check_identity, identity_digest
from protlm.tasks.finetune import (LM_FOLDER, STATE_FOLDER, FinetunedModel, RunState, SequenceSource, batch_residues,
                                   finetuned_embedder, optimizer_for, parameter_counts, run_digest, save_lm,
                                   split_batch, to_budget, trainable_lm, trainable_state, training_file_digests,
                                   warmup_factor)
from protlm.tasks.protocols import Protocol, TaskData

log = logging.getLogger("protlm.tasks")

HEAD_JSON, HEAD_WEIGHTS, METRICS_JSON = "head.json", "head.safetensors", "metrics.json"
WEIGHTS_DIGEST = "weights_sha256"  # head.json: SHA-256 of head.safetensors
#: What ``protlm train`` writes into its --out folder (an existing one is replaced only with --overwrite).
HEAD_FILES = (HEAD_JSON, HEAD_WEIGHTS, METRICS_JSON, perprotein.PER_PROTEIN_JSON, LM_FOLDER)


# --------------------------------------------------------------------------- training


def fit_head(config: TaskConfig, protocol: Protocol, train_inputs, valid_inputs, dim: int, info: dict,
             progress: Callable[[int, float, float], None] | None = None, lm=None, run_state=None,
             resume: bool = False, env=None, tick: Callable[[int, int, int], None] | None = None,
             finish: bool = False):
    """Train with early stopping on the protocol's validation value; returns (model, history,
    best_epoch, stopped_by): ``"early_stopping"`` (patience ran out), ``"epoch_cap"``
    (train.epochs did), ``"finished_early"`` (``finish``: an interrupted run ended at its last
    checkpointed epoch, by the user's choice) or ``"closed_form"`` (a head fit without a loop).

    ``lm``: a trainable backend (:func:`protlm.tasks.finetune.trainable_lm`) to train with the
    head; the inputs are then :class:`~protlm.tasks.finetune.SequenceSet`s and the model a
    :class:`~protlm.tasks.finetune.FinetunedModel`, with the LM's own learning rate, warm-up and
    gradient accumulation (:func:`_finetune_epoch`). ``run_state``: a
    :class:`~protlm.tasks.finetune.RunState` written at every epoch's end and every
    ``run_state.every`` optimizer steps when fine-tuning, at an epoch's end once
    ``run_state.every_seconds`` have passed for a head on frozen features; ``resume``: continue
    from it exactly. ``env``: the torchrun processes (:class:`protlm.io.processes.DistEnv`) sharing the batches. ``tick(epoch,
    proteins done, proteins in the set)`` reports progress inside a fine-tuning epoch."""
    t = config.train
    ft = config.finetune if lm is not None else None
    world, rank = (env.world, env.rank) if env is not None else (1, 0)
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = protocol.new_head(config, dim, info)
    if rank:
        torch.manual_seed(t.seed + 7919 * rank)  # dropout differs between processes; the initial weights do not
    if lm is not None:
        model = FinetunedModel(lm, model, config.embedder_spec.options.layer, ft.max_padding, ft.precision)
    else:
        direct = protocol.fit_direct(config, model, train_inputs, info)
        if direct is not None:
            model.eval()
            return model, direct.get("history", []), 0, "closed_form"
    state = protocol.fit_state(config, model, train_inputs, info)
    opt = optimizer_for(model, t.lr, t.weight_decay, ft)
    acc = Accumulator(opt, ft, protocol, world, t.clip_grad_norm) if ft is not None else None

    key, higher = protocol.stopping(config)
    sign = -1.0 if higher else 1.0  # compared as a loss: lower is better
    best, best_state, best_epoch, history, waited = math.inf, None, 0, [], 0
    stopped_by = "epoch_cap"
    t0 = time.perf_counter()
    first_epoch, skip, done = 1, 0, False
    totals = [0.0, 0.0]  # this process's summed training loss and its weight, in the current epoch
    epoch_rng = rng.bit_generator.state
    if resume and run_state is not None and run_state.exists():
        saved = run_state.load(model, opt, rank)
        first_epoch, skip = saved["epoch"], saved["batch"]
        if acc is not None:
            acc.steps = saved["steps"]
        best = math.inf if saved["best"] is None else saved["best"]
        best_epoch, history, waited = saved["best_epoch"], saved["history"], saved["waited"]
        best_state, stopped_by, done = saved["best_state"], saved["stopped_by"], saved["done"]
        totals = list(saved["totals"][rank] if "totals" in saved else [saved["run_loss"], saved["seen"]])
        rng.bit_generator.state = epoch_rng = saved["epoch_rng"]
        torch.set_rng_state(saved["torch_rng"])
        if history:  # the epochs' times go on from where the interrupted run left them
            t0 -= float(history[-1].get("seconds") or 0.0)
        if acc is not None:
            log.info("%s: resumed at epoch %d, batch %d (%d optimizer steps done)", config.name, first_epoch, skip,
                     acc.steps)
        else:
            log.info("%s: resumed after epoch %d (best epoch %d so far)", config.name, first_epoch - 1, best_epoch)
        if finish and not done:  # end here: the best finished epoch is kept, nothing more is trained
            if best_state is None:
                raise InputError(f"{config.name}: --finish: the interrupted run has not finished an epoch yet; "
                                 f"there is nothing to keep (resume it without --finish)")
            stopped_by, done = "finished_early", True
            log.warning("%s: --finish: ending the run after epoch %d (best epoch %d; early stopping had waited %d "
                        "of its %d epochs of patience)", config.name, len(history), best_epoch, waited, t.patience)

    def checkpoint(epoch: int, batch: int, finished: bool = False) -> None:
        rngs = gather_objects(torch.get_rng_state(), env) if env is not None else [torch.get_rng_state()]
        all_totals = gather_objects(list(totals), env) if env is not None else [list(totals)]
        if rank == 0:
            run_state.save(model, opt, best_state, {
                "epoch": epoch, "batch": batch, "steps": acc.steps if acc is not None else 0,
                "best": None if math.isinf(best) else best,
                "best_epoch": best_epoch, "history": history, "waited": waited, "stopped_by": stopped_by,
                "done": finished, "totals": all_totals, "epoch_rng": epoch_rng}, rngs)
        if env is not None:
            barrier(env)

    def on_step(epoch: int, batch: int) -> None:
        if run_state is not None and acc.steps % run_state.every == 0:
            checkpoint(epoch, batch)

    for epoch in range(first_epoch, t.epochs + 1):
        if done:
            break
        model.train()
        if skip == 0:
            totals = [0.0, 0.0]
            epoch_rng = rng.bit_generator.state
        batches = protocol.train_batches(config, model, train_inputs, rng)
        if ft is None:
            _head_epoch(config, protocol, model, opt, batches, state, totals, epoch)
        else:
            _finetune_epoch(config, protocol, model, acc, batches, state, totals, epoch, skip, rank, world,
                            lambda b: on_step(epoch, b),
                            (lambda n: tick(epoch, n, len(train_inputs))) if tick is not None and rank == 0 else None)
        skip = 0
        run_loss, seen = (all_reduce_sum(totals, env) if env is not None else totals)
        value = protocol.stopping_value(config, model, valid_inputs, state, info)  # every process: the same decision
        # a metric can be undefined (Spearman ρ of constant predictions): no improvement, not a divergence
        undefined = higher and math.isnan(value)
        history.append({"epoch": epoch, "train_loss": run_loss / max(seen, 1), key: None if undefined else value,
                        "seconds": time.perf_counter() - t0})
        if ft is not None:
            history[-1]["optimizer_steps"] = acc.steps
        if not undefined and not math.isfinite(value):
            if progress is not None and rank == 0:
                progress(epoch, history[-1]["train_loss"], value, None)
            raise ProtlmError(f"{config.name}: the validation value became {value} in epoch {epoch}; the run "
                              f"diverged — nothing was saved")
        if not undefined and sign * value < best - (1e-6 if not higher else 0.0):
            best, best_epoch, waited = sign * value, epoch, 0
            best_state = trainable_state(model)
        else:
            waited += 1
            if waited >= t.patience:
                stopped_by = "early_stopping"
                done = True
        if progress is not None and rank == 0:
            before = history[-2]["seconds"] if len(history) > 1 else 0.0
            progress(epoch, history[-1]["train_loss"], value,
                     {"seconds": history[-1]["seconds"] - before, "elapsed": history[-1]["seconds"],
                      "cap": t.epochs, "first": first_epoch, "best_epoch": best_epoch, "waited": waited,
                      "patience": t.patience})
        if run_state is not None and (ft is not None or run_state.due(done)):
            totals = [0.0, 0.0]
            epoch_rng = rng.bit_generator.state
            checkpoint(epoch + 1, 0, done)
    if best_state is None and history:  # every epoch's metric undefined: no epoch to keep
        raise ProtlmError(f"{config.name}: the validation {key} was undefined in every epoch (constant predictions); "
                          f"nothing was saved — use train.early_stopping=loss")
    if best_state is not None:
        model.load_state_dict(best_state, strict=lm is None)
    model.eval()
    return model, history, best_epoch, stopped_by


def _finite(config: TaskConfig, loss: torch.Tensor, epoch: int, finetuning: bool) -> float:
    value = loss.item()
    if not math.isfinite(value):
        raise ProtlmError(f"{config.name}: the training loss became {value} in epoch {epoch}; the run diverged (lower "
                          f"train.lr{' or finetune.lr' if finetuning else ''}) — nothing was saved")
    return value


def clip_gradients(params, max_norm: float) -> None:
    """``train.clip_grad_norm``: the gradients' total norm clipped to ``max_norm`` (0: left as they are)."""
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_norm)  # parameters without a gradient are skipped


def _head_epoch(config, protocol, model, opt, batches, state, totals, epoch) -> None:
    """One epoch of a head on frozen features: one AdamW step per batch."""
    for batch in batches:
        out = protocol.batch_loss(config, model, batch, state)
        if out is None:
            continue
        loss, weight = out
        value = _finite(config, loss, epoch, False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), config.train.clip_grad_norm)
        opt.step()
        totals[0] += value * weight
        totals[1] += weight


def _finetune_epoch(config, protocol, model, acc, batches, state, totals, epoch, skip, rank, world, on_step,
                    tick=None) -> None:
    """One epoch with the LM in the loop. Batch ``b`` of the epoch's order belongs to process
    ``b % world``; an optimizer step follows every ``world × finetune.batches_per_step`` batches
    (and, with ``tokens_per_step``, once that many residues are gathered), so two processes with one
    batch per step equal one process accumulating two."""
    since = 0  # batches (of every process) since the last optimizer step: the same count everywhere
    proteins = 0
    for b, batch in enumerate(batches):
        proteins += len(batch[0])
        if b < skip:
            continue  # done before the resume: replayed only to move the batch order's RNG along
        if b % world == rank:
            pending = to_budget(batch, acc.tokens_per_batch)
            while pending:
                piece = pending.pop(0)
                try:
                    out = protocol.batch_loss(config, model, piece, state)
                except (RuntimeError, MemoryError) as exc:
                    if not is_oom(exc):
                        raise
                    if len(piece[0]) == 1:
                        raise ProtlmError(f"{config.name}: one protein of {len(piece[1].seqs[0])} residues does not "
                                          f"fit in memory for training; crop it (train.max_residues), or use "
                                          f"finetune.checkpointing or method lora") from None
                    log.warning("%s: out of memory on a batch of %d proteins; split in halves (the gradient is the "
                                "same)", config.name, len(piece[0]))
                    pending = split_batch(piece) + pending
                    continue
                if out is not None:
                    loss, weight = out
                    value = _finite(config, loss, epoch, True)
                    acc.add(loss, weight, piece)
                    totals[0] += value * weight
                    totals[1] += weight
        since += 1
        if tick is not None:
            tick(proteins)
        if since >= world * acc.batches_per_step and acc.ready():
            acc.step()
            since = 0
            on_step(b + 1)
    if since:
        acc.step()  # the epoch's last, partial accumulation


class Accumulator:
    """Gradient accumulation and the optimizer step of fine-tuning, across torchrun processes.

    Each batch's loss is weighted by what it is a mean over — residues for per-residue protocols,
    proteins otherwise — and the step divides the summed gradients by the summed weights of every
    batch of every process since the last step: the gradient of the mean loss over all of them,
    whatever the batch sizes and the number of processes. Gradients are summed over the processes
    with one all-reduce per step (gloo on CPU, NCCL on GPUs)."""

    def __init__(self, opt, ft, protocol: Protocol, world: int, clip: float = 0.0):
        self.opt = opt
        self.clip = clip
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.world = world
        self.per_residue = protocol.output_level == "residue"
        self.batches_per_step = ft.batches_per_step
        self.tokens_per_batch = ft.tokens_per_batch
        self.budget = ft.tokens_per_step
        self.warmup = ft.warmup_steps
        self.steps = 0
        self.weight = 0.0
        self.residues = 0

    def add(self, loss: torch.Tensor, weight: float, batch) -> None:
        residues = batch_residues(batch)
        w = residues if self.per_residue else weight
        (loss * w).backward()
        self.weight += w
        self.residues += residues

    def ready(self) -> bool:
        if not self.budget:
            return True
        residues = self.residues
        if self.world > 1:
            t = torch.tensor([float(residues)], dtype=torch.float64)
            torch.distributed.all_reduce(t)
            residues = int(t.item())
        return residues >= self.budget

    def step(self) -> None:
        total = self.weight
        if self.world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([total], dtype=grads[0].dtype,
                                                                              device=grads[0].device)])
            torch.distributed.all_reduce(flat)
            total = float(flat[-1].item())
            offset = 0
            for p, g in zip(self.params, grads):
                n = g.numel()
                p.grad = flat[offset:offset + n].view_as(p).clone()
                offset += n
        if total > 0:
            for p in self.params:
                if p.grad is not None:
                    p.grad.div_(total)
            clip_gradients(self.params, self.clip)  # after the mean over every process's batches
            if self.warmup:
                for g in self.opt.param_groups:
                    g["lr"] = g["base_lr"] * warmup_factor(self.steps, self.warmup)
            self.opt.step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        self.weight, self.residues = 0.0, 0


# --------------------------------------------------------------------------- files


def save_head(out: Path, model, info: dict, metrics: dict, per_protein: dict | None = None) -> None:
    """metrics.json is written last: a folder holding it is whole."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    write_with_path(out / HEAD_WEIGHTS, lambda tmp: save_file(state, tmp))
    # the weights' digest in head.json: a weights file replaced or edited later is refused when loaded
    info = {**info, WEIGHTS_DIGEST: sha256_file(out / HEAD_WEIGHTS)}
    write_bytes(out / HEAD_JSON, json_bytes(info))
    if per_protein is not None:
        perprotein.write(out, per_protein)
    else:
        (out / perprotein.PER_PROTEIN_JSON).unlink(missing_ok=True)  # never values of an earlier head
    write_bytes(out / METRICS_JSON, json_bytes(metrics))


@dataclass
class TrainedHead:
    config: TaskConfig
    model: torch.nn.Module
    dim: int
    info: dict  # head.json
    folder: Path | None = None
    state: dict | None = None  # the protocol's state in head.json (classes, normalisation, …): what decoding needs

    def __post_init__(self):
        if self.state is None:
            self.state = self.protocol.state_of(self.info)

    @property
    def protocol(self) -> Protocol:
        return self.config.protocol_obj


def load_head(folder: str | Path) -> TrainedHead:
    """A head folder written by :func:`train` (weights read with safetensors, never pickle; every
    size checked against head.json before anything is allocated)."""
    folder = Path(folder)
    if not (folder / HEAD_JSON).is_file() or not (folder / HEAD_WEIGHTS).is_file():
        raise InputError(f"--head {folder}: not a trained head folder (needs {HEAD_JSON} and {HEAD_WEIGHTS})")
    info = headfile.read_head_json(folder, HEAD_JSON)  # a mapping with sane sizes, or one clear line
    config = build_task_config(info["config"])
    protocol = config.protocol_obj
    dim = int(info["dim"])
    state = protocol.state_of(info)
    if not isinstance(state, dict):
        raise InputError(f"--head {folder}: head.json field 'protocol_state' must be a JSON object")
    protocol.check_info(config, state, f"--head {folder}")
    headfile.check_head_shape(folder, getattr(config.head, "hidden", 1), getattr(config.head, "kernel", 0))

    with torch.device("meta"):  # shapes only: nothing is allocated before the weights file agrees
        shapes = protocol.new_head(config, dim, state)
    weights = headfile.load_checked_state(folder / HEAD_WEIGHTS, shapes)
    # names, shapes and values first (their messages say more); then the file is the one trained
    if WEIGHTS_DIGEST in info and info[WEIGHTS_DIGEST] != sha256_file(folder / HEAD_WEIGHTS):  # heads before 0.5: none
        raise InputError(f"--head {folder}: {HEAD_WEIGHTS} differs from the file head.json records (SHA-256); the "
                         f"weights were replaced or changed after training")
    model = protocol.new_head(config, dim, state)
    model.load_state_dict(weights)
    model.eval()
    if config.finetuning:  # the head reads the fine-tuned LM saved beside it
        if not (folder / LM_FOLDER).is_dir():
            raise InputError(f"--head {folder}: a head trained with a fine-tuned LM, but its {LM_FOLDER}/ folder is "
                             f"missing")
        config.embedder = finetuned_embedder(config.embedder, folder / LM_FOLDER)
    return TrainedHead(config, model, dim, info, folder, state)


# --------------------------------------------------------------------------- the jobs


def check_source(head: TrainedHead, source) -> None:
    """The inputs must come from the model the head was trained on (not only the same width)."""
    width = head.protocol.input_dim(head.config, source.dim)
    if width != head.dim:
        made = "" if width == source.dim else f" (an input of width {width} for this protocol)"
        raise InputError(f"embedder {source.name}: gives {source.dim}-dimensional embeddings{made}, the head expects "
                         f"{head.dim}")
    warning = check_identity(head.info.get("embedder_identity"), source.identity(checksum=False),
                             f"embedder {source.name}")
    if warning:
        log.warning("%s", warning)




def cut_short_message(config: TaskConfig, best_epoch: int, stopped_by: str = "epoch_cap") -> str:
    if stopped_by == "finished_early":
        return (f"{config.name}: --finish ended the run with the best validation value in its last finished epoch "
                f"({best_epoch}): the head is probably under-trained")
    return (f"{config.name}: training stopped at the epoch cap (train.epochs={config.train.epochs}) with the best "
            f"validation value in the last epoch ({best_epoch}): the head is probably under-trained; raise "
            f"train.epochs so that early stopping (train.patience={config.train.patience}) ends it")


def train(config: TaskConfig, out: str | Path, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
          progress: Callable[[str, dict], None] | None = None, source=None, resume: bool = False,
          record: dict | None = None, finish: bool = False) -> dict:
    """Train the head a config describes, score it on validation and test sets, save the folder.

    ``source``: the inputs to use (default: the protocol's, made from ``config.embedder``); left open.
    ``record``: fields the caller keeps in metrics.json beside the metrics (the suite's digests),
    written with it once. Returns metrics.json's document (plus ``out`` and ``seconds``)."""
    out = Path(out)
    t0 = time.perf_counter()
    protocol = config.protocol_obj
    data = protocol.load_data(config, data_dir)
    files = training_file_digests(config, data_dir)
    if config.finetuning:
        return _finetune(config, protocol, out, data, cache_dir, progress, t0, resume, record, finish, files)
    own = source is None
    if own:
        source = protocol.open_source(config, cache_dir)
    try:
        return _train(config, protocol, out, source, data, progress, t0, record, resume, finish, files)
    finally:
        if own:
            source.close()


def _train(config: TaskConfig, protocol: Protocol, out: Path, source, data: TaskData, progress, t0,
           record: dict | None = None, resume: bool = False, finish: bool = False, files: list[str] | None = None
           ) -> dict:
    def inputs(dataset, name):
        def bar(done, total):
            if progress is not None:
                progress("embed", {"set": name, "done": done, "total": total})

        return protocol.inputs(config, source, dataset, bar)

    tr, va = inputs(data.train, "train"), inputs(data.valid, "valid")
    te = {name: inputs(s, name) for name, s in data.tests.items()}
    t_embed = time.perf_counter() - t0
    dim = protocol.input_dim(config, int(source.dim))
    identity = source.identity()

    def epoch_cb(epoch, tl, vl, timing=None):
        if progress is not None:
            progress("epoch", {"epoch": epoch, "train_loss": tl, "valid_loss": vl, "key": protocol.stopping(config)[0],
                               **(timing or {})})

    run_state = RunState(out, run_digest(config, identity_digest(identity)),
                         every_seconds=config.train.checkpoint_seconds, files=files)
    check_interrupted(run_state, resume, out)
    model, history, best_epoch, stopped_by = fit_head(config, protocol, tr, va, dim, data.info, epoch_cb,
                                                      run_state=run_state, resume=resume, finish=finish)
    # the cap (or --finish), not early stopping, ended training while the validation value was still improving
    cut_short = stopped_by in ("epoch_cap", "finished_early") and best_epoch == len(history)
    if cut_short:
        log.warning("%s", cut_short_message(config, best_epoch, stopped_by))
    t_train = time.perf_counter() - t0 - t_embed
    n_boot, seed = config.n_boot, config.evaluate.seed

    paired: dict[str, dict] = {}

    def scored(inp, dataset, name=None):
        preds = protocol.predict(config, model, inp, data.info)
        if name is not None:  # a test set: its per-protein values too (paired comparisons read them)
            paired[name] = perprotein.set_values(protocol, config, preds, dataset)
        return protocol.score(config, preds, dataset, data.info, n_boot, seed)

    metrics = {"valid": scored(va, data.valid) if protocol.scores_valid else {},
               "test": {name: scored(te[name], s, name) for name, s in data.tests.items()}}
    metrics_doc = write_head(out, config, data, dim, model, (history, best_epoch, stopped_by, cut_short), identity,
                             metrics, {"embed": t_embed, "train": t_train}, per_protein=paired, record=record)
    run_state.clear()  # the head folder is whole: the resume checkpoint has done its work
    return {**metrics_doc, "out": str(out), "seconds": time.perf_counter() - t0}


def check_interrupted(run_state: RunState, resume: bool, out: Path) -> None:
    """An interrupted run's checkpoint in ``out`` is continued only when asked (--resume / --finish)."""
    if run_state.exists() and not resume:
        raise InputError(f"--out {out}: holds an interrupted training run ({STATE_FOLDER}/); pass --resume to "
                         f"continue it, --finish to end it at its best finished epoch, or --overwrite to start again")


def write_head(out: Path, config: TaskConfig, data: TaskData, dim: int, head, run: tuple, identity: dict,
               metrics: dict, seconds: dict, finetune: dict | None = None, per_protein: dict | None = None,
               record: dict | None = None) -> dict:
    """Write the head folder (head.json, head.safetensors, per_protein.json, metrics.json) of a
    finished training ``run`` = (history, best epoch, what stopped it, cut short?); returns
    metrics.json's document."""
    history, best_epoch, stopped_by, cut_short = run
    counts = data.counts()
    stop = {"best_epoch": best_epoch, "epochs_run": len(history), "epoch_cap": config.train.epochs,
            "stopped_by": stopped_by, "cut_short": cut_short,
            "stopped_on": config.protocol_obj.stopping_text(config)}
    extra = {"finetune": finetune} if finetune is not None else {}
    info = {
        "protlm_version": __version__,
        "protocol": config.protocol,
        "config": config.as_dict(),
        "protocol_state": data.info,  # opaque to the engine: the protocol reads it back (Protocol.state_of)
        "dim": dim,
        "parameters": sum(p.numel() for p in head.parameters()),
        "history": history,
        **stop,
        "embedder_identity": identity,
        **extra,
        "proteins": counts,
        "data_files": data_files(config),
        "seconds": seconds,
    }
    metrics_doc = {"task": config.name, "protocol": config.protocol, "embedder": config.embedder_name,
                   "embedder_identity": identity, **extra, "head": config.head.type, "proteins": counts, **stop,
                   **metrics, **(record or {})}
    save_head(out, head, info, metrics_doc, per_protein)
    return metrics_doc


def distributed_run() -> bool:
    """Started by torchrun with several processes (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def other_process() -> bool:
    """A torchrun process other than process 0 (it trains with process 0, which checks and writes)."""
    return distributed_run() and int(os.environ.get("RANK", "0")) != 0


def _finetune(config: TaskConfig, protocol: Protocol, out: Path, data: TaskData, cache_dir, progress, t0,
              resume: bool = False, record: dict | None = None, finish: bool = False,
              files: list[str] | None = None) -> dict:
    """Train the LM with the head (module docstring of :mod:`protlm.tasks.finetune`), save both,
    then score the sets with the saved LM through the batch runner, as ``protlm evaluate`` does."""
    ft = config.finetune
    spec = config.embedder_spec
    env = init_distributed("cpu" if spec.options.device == "cpu" else "auto") if distributed_run() else None
    torch.manual_seed(config.train.seed)  # LoRA's initial adapters: the same in every run and every process
    lm = trainable_lm(spec, ft)
    base_fingerprint = lm.fingerprint()
    counts_lm = parameter_counts(lm.module)
    sequences = SequenceSource(lm.dim, lm.max_residues or 0)
    tr = protocol.inputs(config, sequences, data.train)
    va = protocol.inputs(config, sequences, data.valid)
    dim = protocol.input_dim(config, int(lm.dim))
    log.info("%s: fine-tuning %s (%s): %d of %d LM parameters train", config.name, spec.name, ft.method,
             counts_lm["lm_trained_parameters"], counts_lm["lm_parameters"])

    def epoch_cb(epoch, tl, vl, timing=None):
        if progress is not None:
            progress("epoch", {"epoch": epoch, "train_loss": tl, "valid_loss": vl, "key": protocol.stopping(config)[0],
                               **(timing or {})})

    run_state = RunState(out, run_digest(config, base_fingerprint), ft.checkpoint_steps,
                         files=files)
    check_interrupted(run_state, resume, out)
    out.mkdir(parents=True, exist_ok=True)
    def tick(epoch, done, total):
        if progress is not None:
            progress("train", {"epoch": epoch, "done": done, "total": total})

    model, history, best_epoch, stopped_by = fit_head(config, protocol, tr, va, dim, data.info, epoch_cb, lm=lm,
                                                      run_state=run_state, resume=resume, env=env, tick=tick,
                                                      finish=finish)
    if env is not None:
        barrier(env)
        destroy(env)
        if env.rank != 0:
            return {"rank": env.rank}  # process 0 saves and scores
    cut_short = stopped_by in ("epoch_cap", "finished_early") and best_epoch == len(history)
    if cut_short:
        log.warning("%s", cut_short_message(config, best_epoch, stopped_by))
    t_train = time.perf_counter() - t0
    save_lm(lm, ft, spec.name, out / LM_FOLDER)
    head = model.head.to("cpu").eval()
    del model, lm
    eval_spec = parse_spec(finetuned_embedder(config.embedder, out / LM_FOLDER), "embedder")
    n_boot, seed = config.n_boot, config.evaluate.seed
    with FeatureSource(eval_spec.with_options(layer=spec.options.layer), spec.options.layer, cache_dir) as source:
        identity = source.identity()

        paired: dict[str, dict] = {}

        def scored(dataset, name, test=False):
            def bar(done, total):
                if progress is not None:
                    progress("embed", {"set": name, "done": done, "total": total})

            inp = protocol.inputs(config, source, dataset, bar)
            preds = protocol.predict(config, head, inp, data.info)
            if test:
                paired[name] = perprotein.set_values(protocol, config, preds, dataset)
            return protocol.score(config, preds, dataset, data.info, n_boot, seed)

        metrics = {"valid": scored(data.valid, "valid") if protocol.scores_valid else {},
                   "test": {name: scored(s, name, test=True) for name, s in data.tests.items()}}
    finetune = {"method": ft.method, "lm": LM_FOLDER, "base": spec.name, "base_fingerprint": base_fingerprint,
                **counts_lm}
    metrics_doc = write_head(out, config, data, dim, head, (history, best_epoch, stopped_by, cut_short), identity,
                             metrics, {"train": t_train, "score": time.perf_counter() - t0 - t_train}, finetune,
                             per_protein=paired, record=record)
    run_state.clear()  # the head folder is whole: the resume checkpoint has done its work
    return {**metrics_doc, "out": str(out), "seconds": time.perf_counter() - t0}


def evaluate(head: TrainedHead, sets: dict, embedder: str | None = None, cache_dir: str | Path | None = None,
             n_boot: int | None = None, seed: int | None = None) -> dict:
    """Score a trained head on sets made by its protocol (:meth:`Protocol.evaluation_sets`)."""
    config, protocol = head.config, head.protocol
    with protocol.open_source(config, cache_dir, embedder) as source:
        check_source(head, source)
        out = {}
        for name, dataset in sets.items():
            preds = protocol.predict(config, head.model, protocol.inputs(config, source, dataset), head.state)
            out[name] = protocol.score(config, preds, dataset, head.state, config.n_boot if n_boot is None else n_boot,
                                       config.evaluate.seed if seed is None else seed)
    return out


def predict(head: TrainedHead, ids: list[str], sequences: list[str], embedder: str | None = None,
            cache_dir: str | Path | None = None) -> list[dict]:
    """Predictions for unlabelled proteins: one dict per protein and target (the protocol's rows).

    ``sequences`` as written (an HDF5 embedder is looked up by their hash); B/O/U/Z are given to
    an embedder as X, like the training sets."""
    config, protocol = head.config, head.protocol
    with protocol.open_source(config, cache_dir, embedder) as source:
        check_source(head, source)
        preds = protocol.predict(config, head.model, protocol.query_inputs(config, source, ids, sequences), head.state)
    return protocol.prediction_rows(head, ids, sequences, preds)


def predict_file(head: TrainedHead, ids: list[str], sequences: list[str], output, options: dict | None = None,
                 embedder: str | None = None, cache_dir: str | Path | None = None) -> dict:
    """``protlm predict``: predictions of unlabelled proteins written where the protocol writes them
    (a CSV/JSON file for label protocols, a folder of maps for contacts)."""
    protocol = head.protocol
    with protocol.open_source(head.config, cache_dir, embedder) as source:
        check_source(head, source)
        return protocol.predict_to(head, ids, sequences, output, dict(options or {}), source)
