"""diffuse: diffusion models end to end, around one abstraction, the Gaussian path
x_t = alpha(t) x0 + sigma(t) eps.

The core (processes, parameterisations, losses, samplers) is imported eagerly and is light;
networks, data, training, loading (`diffuse.load(run)`) and the CLI load on first use.
"""

from importlib import import_module

from . import samplers
from .analytic import GaussianMixture
from .denoiser import Denoiser
from .objectives import DenoisingLoss, sample_times
from .parameterization import PREDICTIONS, convert
from .process import EDM, VE, VP, DiscreteVP, Flow, GaussianPath, get_process, process_from_config
from .samplers import invert, sample

__version__ = "0.2.0"

_LAZY = ("models", "data", "training", "metrics", "cli", "checkpoint", "text", "pipeline", "recipes", "runs",
         "latent", "plotting", "conditions", "configs", "interop", "inverse", "image_metrics")
# Names of the outer layers, loaded on first use: {name: module}
_LAZY_NAMES = {"load": "runs", "load_classifier": "runs", "load_autoencoder": "runs", "Pipeline": "pipeline",
               "recipe": "recipes", "train": "training", "Engine": "training", "RunConfig": "training",
               "TrainConfig": "training", "DiffusionTaskConfig": "training", "DataConfig": "data",
               "from_diffusers": "interop", "measure": "inverse"}


def __getattr__(name):
    if name in _LAZY:
        return import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'diffuse' has no attribute {name!r}")


__all__ = ["GaussianPath", "VP", "DiscreteVP", "VE", "EDM", "Flow", "get_process",
           "process_from_config", "PREDICTIONS", "convert", "DenoisingLoss", "sample_times",
           "Denoiser", "GaussianMixture", "sample", "invert", "samplers"]
