"""Shared test settings.

The tests work on small tensors, where intra-op threads cost more in synchronisation than
they save (and contend badly on a busy 2-core machine): run them single-threaded.  Child
processes (the torchrun / DDP test) inherit this through OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
