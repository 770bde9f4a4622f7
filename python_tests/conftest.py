"""Test configuration shared by every test module.

Without a GPU, Triton kernels run in the interpreter: the variable must be set before Triton is
first imported, so it is set here, at collection time. torch.compile's on-disk caches are per
test session: a cache shared with another checkout can replay a graph that calls an op with the
schema it had there (the cache key does not cover custom ops' bodies or backward schemas).
Likewise tuned launch-config tables go to a per-session directory.
"""

import os
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="rtl_inductor_"))
# tuned Triton tables of this user (rtl-kernels tune) must not change what the tests see
os.environ["RTL_KERNELS_CONFIG_DIR"] = tempfile.mkdtemp(prefix="rtl_configs_")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile("thorough", deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (small pipeline models train fastest so, and the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
