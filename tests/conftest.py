import pytest
import torch

from diffuse import EDM, VE, VP, Flow


def all_processes():
    """One of each kind of process, with ids for parametrised tests."""
    return [
        pytest.param(VP("linear"), id="vp-linear"),
        pytest.param(VP("cosine"), id="vp-cosine"),
        pytest.param(VP.from_betas("linear", 1000), id="ddpm-linear"),
        pytest.param(VP.from_betas("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012), id="ddpm-scaled"),
        pytest.param(VP.from_betas("squaredcos_cap_v2", 1000), id="ddpm-cosine"),
        pytest.param(VE(0.01, 50.0), id="ve"),
        pytest.param(EDM(), id="edm"),
        pytest.param(Flow(), id="flow"),
    ]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield
