"""Embedding: any protein LM in Hugging Face format → per-residue / per-protein vectors, HDF5."""

from protlm.embed.embedder import EmbedOptions, Embedder
from protlm.embed.pipeline import embed_fasta

__all__ = ["EmbedOptions", "Embedder", "embed_fasta"]
