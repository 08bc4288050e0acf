import os
import subprocess
import sys

import pytest
import torch

# The suite runs on 2-core CI machines, often next to other jobs: one thread per test process keeps
# timings predictable and avoids oversubscription. Forced, not defaulted: tests compare runs in
# this process with runs in subprocesses bit for bit, and float sums depend on the thread count.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=None, env=None, timeout=600):
    """Run `python -m lfdm_cli ARGS` in a subprocess, as a user would; returns CompletedProcess."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1")
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "lfdm_cli", *map(str, args)], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lfdm():
    return run_cli
