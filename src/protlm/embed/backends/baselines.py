"""The papers' baselines as backends: ``onehot``, ``blosum62``, ``kmer`` and k-mer model folders.

The tables and the k-mer model live in :mod:`protlm.embed.baselines`; this file registers them.
"""

from __future__ import annotations

from protlm.embed import baselines
from protlm.embed.backend import Backend
from protlm.embed.baselines import (MODEL_TYPE, KmerEmbedder, TableBackend, blosum62_table, is_kmer_folder,
                                    onehot_table, refuse_lm_options)
from protlm.embed.registry import register
from protlm.embed.spec import EmbedOptions
from protlm.errors import InputError


@register(names=("onehot",), help="one-hot over the 20 residues + X (D = 21)")
def _onehot(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return TableBackend("onehot", onehot_table())


@register(names=("blosum62",), help="each residue's BLOSUM62 row (D = 21)")
def _blosum62(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return TableBackend("blosum62", blosum62_table())


@register(names=("kmer",), help="the committed ProtVec-like 3-mer model (D = 64)")
def _kmer(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    folder = baselines.default_kmer_folder()
    if not is_kmer_folder(folder):
        raise InputError(f"--model kmer: the default k-mer model {folder} is missing; train one with "
                         f"`protlm kmer-train FASTA --out DIR` and pass DIR as --model")
    return KmerEmbedder.load(folder, name="kmer")


@register(model_types=(MODEL_TYPE,), help="a k-mer model folder (protlm kmer-train)")
def _kmer_folder(source: str, options: EmbedOptions) -> Backend:
    refuse_lm_options(source, options)
    return KmerEmbedder.load(source)
