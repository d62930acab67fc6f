"""``protlm serve``: the shipped predictors as a local web application and a JSON API.

- :mod:`protlm.serve.inputs` — what a person submits (pasted FASTA or a bare sequence, or an
  uploaded FASTA file), checked against the server's :class:`~protlm.serve.inputs.Limits` before
  anything is queued: every bad input is one clear message (a 4xx), never a queued job that fails.
- :mod:`protlm.serve.jobs` — the job store (one folder per job under the data folder, its state in
  ``job.json``, written atomically) and the one worker process that runs
  :func:`protlm.predictors.job.predict_folder` on each job in turn. Jobs survive a restart: a
  restarted server queues again every job left queued or running (a running one resumes from
  its finished chunks).
- :mod:`protlm.serve.app` — the FastAPI application: the page (``/``), a job's page
  (``/jobs/{id}``, with the same HTML report ``protlm predict`` writes) and the API
  (``/api/...``; OpenAPI at ``/openapi.json``, readable at ``/docs``).

docs/serve.md describes it. FastAPI and uvicorn are imported only here, never by the rest of protlm.
"""
