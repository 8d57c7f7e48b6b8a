"""Shared test settings.

The tests work on small tensors, where intra-op threads cost more in synchronisation than
they save (and contend badly on a busy 2-core machine): run them single-threaded.  Child
processes (the torchrun / DDP test) inherit this through OMP_NUM_THREADS.
"""

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402

Torchrun = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


@pytest.fixture
def torchrun() -> Torchrun:
    """``run(ARGS)``: ``python -m torch.distributed.run --nproc_per_node=2 ARGS`` on gloo,
    single-threaded, on a free local port, the repository importable; 120 s at most."""

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["OMP_NUM_THREADS"] = "1"
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    return run
