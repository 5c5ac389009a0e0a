"""The built-in tasks; each registers itself (diffuse.training.task.register) on import."""

from .autoencoder import AutoencoderTask, AutoencoderTaskConfig
from .behaviour_cloning import BehaviourCloningConfig, BehaviourCloningTask
from .classifier import ClassifierTask, ClassifierTaskConfig
from .control import ControlTask, ControlTaskConfig
from .diffusion import DiffusionTask, DiffusionTaskConfig, default_network, network_for_shape
from .features import FeatureTask, FeatureTaskConfig
from .mixture_density import MixtureDensityConfig, MixtureDensityTask

__all__ = ["AutoencoderTask", "AutoencoderTaskConfig", "BehaviourCloningConfig", "BehaviourCloningTask",
           "ClassifierTask", "ClassifierTaskConfig", "ControlTask",
           "ControlTaskConfig", "DiffusionTask",
           "DiffusionTaskConfig", "FeatureTask", "FeatureTaskConfig", "MixtureDensityConfig", "MixtureDensityTask",
           "default_network", "network_for_shape"]
