"""Data layer: FASTA, benchmark data sets, tokenised pretraining shards."""

from protlm.data.alphabet import ALPHABET, CleaningPolicy
from protlm.data.fasta import FastaRecord, read_fasta, read_fasta_raw
from protlm.data.records import ProteinRecord

__all__ = [
    "ALPHABET",
    "CleaningPolicy",
    "FastaRecord",
    "ProteinRecord",
    "read_fasta",
    "read_fasta_raw",
]
