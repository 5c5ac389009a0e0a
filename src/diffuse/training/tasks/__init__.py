"""The built-in tasks; each registers itself (diffuse.training.task.register) on import."""

from .autoencoder import AutoencoderTask, AutoencoderTaskConfig
from .classifier import ClassifierTask, ClassifierTaskConfig
from .control import ControlTask, ControlTaskConfig
from .diffusion import DiffusionTask, DiffusionTaskConfig, default_network, network_for_shape
from .features import FeatureTask, FeatureTaskConfig

__all__ = ["AutoencoderTask", "AutoencoderTaskConfig", "ClassifierTask", "ClassifierTaskConfig", "ControlTask",
           "ControlTaskConfig", "DiffusionTask",
           "DiffusionTaskConfig", "FeatureTask", "FeatureTaskConfig", "default_network", "network_for_shape"]
