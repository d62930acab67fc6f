"""Supervised stage 2: small heads trained on frozen embeddings — one engine for every task
(``protlm train / evaluate / predict / benchmark``).

- :mod:`protlm.tasks.protocols` — what a task is, one file per protocol (biotrainer's names:
  residue_to_class, residue_to_value, residues_to_class, residues_to_value, sequence_to_class,
  sequence_to_value; contacts: residue_pairs_to_class), each owning its data, targets, loss,
  decoding, metrics, headline and prediction files;
- :mod:`protlm.tasks.heads` — the heads, one file each with its own Config: CNN, FFN, light
  attention, logistic regression, pair MLP, 2-D ResNet, attention regression;
- :mod:`protlm.tasks.config` — the task config's sections (dataclasses the protocols import);
- :mod:`protlm.tasks.build` — building, checking and loading task configs (above the protocols:
  ``load_task_config``, ``build_task_config``, ``validate``);
- :mod:`protlm.tasks.data` — labelled sets from benchmark names or files (label protocols);
- :mod:`protlm.tasks.contacts` — the contact library (maps, P@L/k, attention features, pictures);
- :mod:`protlm.tasks.features` — embeddings from any embedder or HDF5 file, cached on disk;
- :mod:`protlm.tasks.metrics` — Q3/Q8, Q10/Q2, MCC, Spearman, top-1, bootstrap CIs;
- :mod:`protlm.tasks.headfile` — checked reading of head folders;
- :mod:`protlm.tasks.train` — the engine: training with early stopping, head folders, evaluate, predict;
- :mod:`protlm.tasks.commands` — one function per command (train, evaluate, predict, export-fasta,
  the contact aliases): output checks, the job, the files it writes;
- :mod:`protlm.tasks.suite` — the benchmark suite (``protlm benchmark``), results table, paired differences.
"""
