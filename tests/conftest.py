import os

import pytest
import torch

# Two cores: one intra-op thread per pytest-xdist worker keeps the suite from oversubscribing.
torch.set_num_threads(int(os.environ.get("LUMIERE_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
