import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny test models run fastest on one thread (and never oversubscribe a shared machine).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The development data folder (beside the checkout), or SKFLOW_TEST_DATA."""
    return Path(os.environ.get("SKFLOW_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def rng():
    return np.random.RandomState(0)


# A configuration that trains in about a second: used wherever a test needs *a* fitted model
# rather than a good one.
FAST = dict(hidden_dims=(16, 16), training="flow_matching", max_iter=40, validation_interval=20,
            random_state=0)


@pytest.fixture(scope="session")
def fitted_2d():
    """A model fitted to a 2-D bimodal density (a non-trivial flow, trained briefly)."""
    from skflow import FFJORDDensity
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(-1.5, 0.5, (400, 2)), rng.normal(1.5, 0.7, (400, 2))])
    X[:, 1] *= 2.0
    est = FFJORDDensity(hidden_dims=(32, 32), training="flow_matching", max_iter=400,
                        learning_rate=3e-3, validation_interval=100, n_iter_no_change=None,
                        random_state=0)
    return est.fit(X), X
