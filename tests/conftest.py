import os

import pytest
import torch

from lumiere.runtime import keep_freed_memory

# Two cores: one intra-op thread per pytest-xdist worker keeps the suite from oversubscribing.
torch.set_num_threads(int(os.environ.get("LUMIERE_TEST_THREADS", "1")))
keep_freed_memory()  # as the lumiere command runs (lumiere.runtime): no page faults per activation


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
