"""Contact prediction (the ``residues_to_class`` protocol).

- :mod:`protlm.contacts.data` — coordinates → contact maps (CB–CB < 8 Å, CA fallback), structure
  stretches inside longer sequences, the shared ``coords_ca_cb.npz`` layout;
- :mod:`protlm.contacts.metrics` — P@L/5, L/2, L by separation range, mean over proteins, bootstrap CIs;
- :mod:`protlm.contacts.attention` — ESM's attention → APC → logistic regression;
- :mod:`protlm.contacts.heads` — supervised pair MLP and 2-D ResNet heads and their training;
- :mod:`protlm.contacts.plot` — the predicted-vs-true contact-map picture;
- :mod:`protlm.contacts.api` — ``train`` / ``evaluate`` / ``predict`` on head folders.

See docs/contacts.md.
"""
