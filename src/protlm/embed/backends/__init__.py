"""Embedder backends, one file per family; each registers itself with :mod:`protlm.embed.registry`.

Every module here is imported on first use of the registry, so adding a family is adding a file
(docs/architecture.md).
"""
