"""Sequence-search tools protlm drives from outside (MMseqs2): evolutionary information as input."""
