"""Shipped predictors: small heads trained by protlm's own recipes, installed with the package.

    >>> from protlm.predictors import Predictor, available
    >>> sorted(available())                      # names with their model cards
    ['localization', 'scop_class', 'secondary_structure', 'secondary_structure@unirep1900', 'stability']
    >>> ss = Predictor.load("secondary_structure")   # loaded once, kept (with its embedder)
    >>> ss.predict(["p1"], ["MKTAYIAKQR"])[0]["targets"]["q3"]["prediction"]

A predictor is one (task, embedder): ``TASK@EMBEDDER`` (``ss@unirep1900``), or the task alone on
the default embedder, UniRep-64 (:data:`DEFAULT_EMBEDDER`; :func:`default_names` is that set).
``protlm predict --input my.fa --out results/ [--tasks ss localization ss@unirep1900 …]`` runs them
on a FASTA file (:func:`protlm.predictors.job.predict_folder`); docs/predictors.md says what each
one is.
"""

from protlm.predictors.predictor import (ALIASES, DEFAULT_EMBEDDER, Predictor, available, card, default_names,
                                         embedders, load_many, names, resolve, split_name)

__all__ = ["ALIASES", "DEFAULT_EMBEDDER", "Predictor", "available", "card", "default_names", "embedders", "load_many",
           "names", "resolve", "split_name"]
