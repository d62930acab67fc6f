"""Supervised stage 2: small heads trained on frozen embeddings (``protlm train/evaluate/predict``).

- :mod:`protlm.tasks.config`   — task configs (protocol, data sources, targets, head, training);
- :mod:`protlm.tasks.data`     — labelled sets from benchmark names or files, targets as arrays;
- :mod:`protlm.tasks.features` — embeddings from any embedder, cached on disk;
- :mod:`protlm.tasks.heads`    — the papers' CNN and FFN, light attention, logistic regression;
- :mod:`protlm.tasks.metrics`  — Q3/Q8, Q10/Q2, MCC, Spearman, top-1, bootstrap CIs;
- :mod:`protlm.tasks.train`    — training with early stopping, scoring, head folders, prediction;
- :mod:`protlm.tasks.suite`    — the benchmark suite (``protlm benchmark``).
"""
