"""Test-session settings.

`make test` runs two pytest workers on a 2-core machine. With torch's default of one thread per
core in each worker (and in the subprocesses tests start), the spinning OpenMP threads
oversubscribe the cores; on this machine that made small models up to 10× slower
(benchmarks/bench_heads.py, docs/benchmarks.md). The tests' models are tiny, so every test
process uses one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
# the commands' default embedding cache is the user's cache folder: tests keep theirs in a temporary one
if "PROTLM_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["PROTLM_CACHE"] = tempfile.mkdtemp(prefix="protlm-test-cache-")
    atexit.register(shutil.rmtree, os.environ["PROTLM_CACHE"], True)


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)
