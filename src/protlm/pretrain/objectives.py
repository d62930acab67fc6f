"""From shard residues to model inputs and targets, for the three objective families.

All randomness (crop offsets, masking) comes from the ``rng`` handed in, which the trainer seeds
from (seed, phase, epoch, batch index): a batch is the same whichever process builds it and
whenever it is rebuilt after a resume.

* ``mlm`` — BERT/ProtBert masking: each residue selected with ``mask_probability`` (15%); of the
  selected, 80% become the mask token, 10% a random standard residue, 10% stay unchanged. Loss on
  the selected positions only. Special tokens and padding are never selected.
* ``causal`` — next-residue prediction over ``<cls> residues <eos>``; the targets are the
  residues (predicting ``<eos>`` is left out so that perplexities compare with MLM's).
* ``span`` — ProtT5's T5 variant: spans of length one (each residue selected with
  ``mask_probability`` and replaced by the sentinel ``<extra_id_0>``), and the decoder
  reconstructs the whole sequence plus ``</s>`` (the training loss covers every position; the
  validation perplexity is also reported on the corrupted positions alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protlm.models.vocab import Vocab

IGNORE = -100


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    labels: torch.Tensor  # aligned with the logits; IGNORE where there is no target
    eval_labels: torch.Tensor  # the targets the reported perplexity is computed on
    n_tokens: int  # real (non-padding) tokens fed to the model
    n_padded: int  # tokens including padding
    lengths: np.ndarray  # real tokens per sequence (for FLOP accounting)

    @property
    def n_targets(self) -> int:
        return int((self.labels != IGNORE).sum())


def crop(seq: np.ndarray, max_residues: int, rng: np.random.Generator) -> np.ndarray:
    if len(seq) <= max_residues:
        return seq
    start = int(rng.integers(0, len(seq) - max_residues + 1))
    return seq[start:start + max_residues]


def _pack(seqs: list[np.ndarray], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """Token matrix (pad-filled) with specials, and a mask of residue positions."""
    n_bos = int(vocab.bos is not None)
    width = max(len(s) for s in seqs) + vocab.n_special
    ids = np.full((len(seqs), width), vocab.pad_id, dtype=np.int64)
    is_residue = np.zeros((len(seqs), width), dtype=bool)
    lut = vocab.residue_lut
    for row, s in enumerate(seqs):
        if n_bos:
            ids[row, 0] = vocab.bos_id
        ids[row, n_bos:n_bos + len(s)] = lut[s]
        is_residue[row, n_bos:n_bos + len(s)] = True
        if vocab.eos is not None:
            ids[row, n_bos + len(s)] = vocab.eos_id
    return ids, is_residue


def make_batch(raw: list[np.ndarray], objective: str, vocab: Vocab, *, max_length: int,
               mask_probability: float, replace_mask: float, replace_random: float,
               rng: np.random.Generator) -> Batch:
    seqs = [crop(np.asarray(s), max_length - vocab.n_special, rng) for s in raw]
    ids, is_residue = _pack(seqs, vocab)
    lengths = np.array([len(s) + vocab.n_special for s in seqs], dtype=np.int64)
    attention = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    n_tokens, n_padded = int(lengths.sum()), int(ids.size)

    if objective == "causal":
        labels = np.full_like(ids, IGNORE)
        labels[:, :-1] = np.where(is_residue[:, 1:], ids[:, 1:], IGNORE)
        t = torch.from_numpy(labels)
        return Batch({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention)},
                     t, t, n_tokens, n_padded, lengths)

    selected = (rng.random(ids.shape) < mask_probability) & is_residue
    if objective == "mlm":
        labels = np.where(selected, ids, IGNORE)
        u = rng.random(ids.shape)
        corrupted = ids.copy()
        to_mask = selected & (u < replace_mask)
        to_random = selected & (u >= replace_mask) & (u < replace_mask + replace_random)
        corrupted[to_mask] = vocab.mask_id
        corrupted[to_random] = rng.choice(vocab.residue_ids, size=int(to_random.sum()))
        t = torch.from_numpy(labels)
        return Batch({"input_ids": torch.from_numpy(corrupted), "attention_mask": torch.from_numpy(attention)},
                     t, t, n_tokens, n_padded, lengths)

    if objective == "span":
        corrupted = np.where(selected, vocab.mask_id, ids)
        # Decoder: reconstruct residues + </s>; teacher forcing from the right-shifted targets.
        targets = np.where(attention.astype(bool), ids, IGNORE)
        decoder_in = np.full_like(ids, vocab.pad_id)
        decoder_in[:, 1:] = np.where(targets[:, :-1] == IGNORE, vocab.pad_id, targets[:, :-1])
        eval_labels = np.where(selected, ids, IGNORE)
        return Batch(
            {"input_ids": torch.from_numpy(corrupted), "attention_mask": torch.from_numpy(attention),
             "decoder_input_ids": torch.from_numpy(decoder_in),
             "decoder_attention_mask": torch.from_numpy(attention)},
            torch.from_numpy(targets), torch.from_numpy(eval_labels), 2 * n_tokens, 2 * n_padded, lengths,
        )
    raise ValueError(f"unknown objective {objective!r}")
