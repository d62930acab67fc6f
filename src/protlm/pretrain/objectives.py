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
* ``plm`` — XLNet's permutation LM, as transformers' ``DataCollatorForPermutationLanguageModeling``
  defines it, batched and for any length: spans of 1–``PLM_MAX_SPAN`` (5) residues, one span per
  context of ``span / PLM_PROBABILITY`` tokens (so 1/6 of the tokens are predicted); a random
  factorisation order that permutes the first half of each protein and then its second half (the
  original XLNet's reuse split, here at each protein's own real length, so odd lengths and
  token-budget batches need no even padding); ``perm_mask`` as the original XLNet's
  ``_local_perm``: unmasked residues are visible to every position, targets and special tokens
  only to what comes after them in the order. (The transformers collator makes special tokens
  visible to every position while they see earlier targets, so with two or more layers a target
  can learn a later target through ``<sep>``/``<cls>``; tests/test_xlnet.py checks by gradients
  that nothing leaks here.) Unlike the collator's identity ``target_mapping`` over every
  position, ``target_mapping`` here has one row per predicted residue (``B × P × L``, P the most
  targets in a protein of the batch), so the query stream and the LM head run on the targets
  only. Masked inputs show the mask token, as in the collator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protlm.models.vocab import Vocab

IGNORE = -100
PLM_PROBABILITY = 1 / 6  # XLNet: share of tokens predicted (the collator's plm_probability)
PLM_MAX_SPAN = 5  # XLNet: longest span of consecutive predicted tokens


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
        tail = vocab.tail_ids
        if tail:
            end = n_bos + len(s) + int(vocab.eos is not None)
            ids[row, end:end + len(tail)] = tail
    return ids, is_residue


def plm_spans(n: int, rng: np.random.Generator, probability: float = PLM_PROBABILITY,
              max_span: int = PLM_MAX_SPAN) -> np.ndarray:
    """Positions (of ``n``) the permutation LM predicts: the collator's span sampling."""
    masked = np.zeros(n, dtype=bool)
    cur = 0
    while cur < n:
        span = int(rng.integers(1, max_span + 1))
        context = int(span / probability)
        start = cur + int(rng.integers(0, context - span + 1))
        masked[start:start + span] = True
        cur += context
    return masked


def plm_order(n: int, rng: np.random.Generator) -> np.ndarray:
    """Factorisation order of ``n`` tokens: rank of each position; first half, then second half."""
    half = n // 2
    return np.concatenate([rng.permutation(half), half + rng.permutation(n - half)])


def _plm_batch(ids: np.ndarray, is_residue: np.ndarray, attention: np.ndarray, lengths: np.ndarray,
               vocab: Vocab, rng: np.random.Generator) -> Batch:
    b, width = ids.shape
    masked = np.zeros_like(is_residue)
    rank = np.tile(np.arange(width, dtype=np.int64), (b, 1))  # padding keeps its position (never masked)
    for row, n in enumerate(lengths):
        masked[row, :n] = plm_spans(int(n), rng)
        rank[row, :n] = plm_order(int(n), rng)
    masked &= is_residue  # special tokens and padding are never predicted
    # XLNet's _local_perm: unmasked residues get rank -1 (everyone sees them, they see no target
    # and no special token); targets and special tokens take part in the order. A target sees
    # what comes strictly before it; any other token also sees itself.
    unmasked = ~masked & is_residue
    in_order = ~unmasked
    rank = np.where(unmasked, -1, rank)
    own = np.where(masked, rank, rank + 1)
    # perm_mask[b, i, j] = 1: position i may not attend to j.
    perm_mask = (own[:, :, None] <= rank[:, None, :]) & in_order[:, None, :]
    counts = masked.sum(axis=1)
    p = max(int(counts.max()), 1)
    target_mapping = np.zeros((b, p, width), dtype=np.float32)
    labels = np.full((b, p), IGNORE, dtype=np.int64)
    for row in range(b):
        pos = np.flatnonzero(masked[row])
        target_mapping[row, np.arange(len(pos)), pos] = 1.0
        labels[row, :len(pos)] = ids[row, pos]
    corrupted = np.where(masked, vocab.mask_id, ids)
    t = torch.from_numpy(labels)
    return Batch({"input_ids": torch.from_numpy(corrupted), "attention_mask": torch.from_numpy(attention),
                  "perm_mask": torch.from_numpy(perm_mask.astype(np.float32)),
                  "target_mapping": torch.from_numpy(target_mapping)},
                 t, t, int(lengths.sum()), int(ids.size), lengths)


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

    if objective == "plm":
        return _plm_batch(ids, is_residue, attention, lengths, vocab, rng)

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
