"""The contact-prediction library of the ``residue_pairs_to_class`` protocol
(:mod:`protlm.tasks.protocols.residue_pairs_to_class`), which is its only user besides tests:

- :mod:`.data` — coordinates → contact maps (CB–CB < 8 Å, CA fallback), structure stretches
  inside longer sequences, the shared ``coords_ca_cb.npz`` layout;
- :mod:`.metrics` — P@L/5, L/2, L by separation range, mean over proteins, bootstrap CIs;
- :mod:`.attention` — ESM's attention maps → APC → logistic regression;
- :mod:`.plot` — the predicted-vs-true contact-map picture.

See docs/contacts.md.
"""
