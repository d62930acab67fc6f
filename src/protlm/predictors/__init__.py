"""Shipped predictors: small heads trained by protlm's own recipes, installed with the package.

    >>> from protlm.predictors import Predictor, available
    >>> sorted(available())                      # names with their model cards
    ['localization', 'scop_class', 'secondary_structure', 'stability']
    >>> ss = Predictor.load("secondary_structure")   # loaded once, kept (with its embedder)
    >>> ss.predict(["p1"], ["MKTAYIAKQR"])[0]["targets"]["q3"]["prediction"]

``protlm predict --input my.fa --out results/ [--tasks ss localization …]`` runs them on a FASTA
file (:func:`protlm.predictors.job.predict_folder`); docs/predictors.md says what each one is.
"""

from protlm.predictors.predictor import ALIASES, Predictor, available, card, load_many, names, resolve

__all__ = ["ALIASES", "Predictor", "available", "card", "load_many", "names", "resolve"]
