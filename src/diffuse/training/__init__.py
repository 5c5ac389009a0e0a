"""Training: one engine (engine.py) for every run, the task contract it trains through (task.py),
the run's configuration (config.py), and the built-in tasks (tasks/): diffusion, the autoencoder
of latent diffusion, the noise-aware classifier of classifier guidance, and the feature network
of the metrics."""

from .config import RunConfig, TaskConfig, TrainConfig
from .engine import Engine, NonFiniteLossError, StepBatches, learning_rate, prepare, read_metrics, resolve, train
from .folder import RunFolderError
from .task import TASKS, Task, register, task_class
from .tasks import (AutoencoderTask, AutoencoderTaskConfig, ClassifierTask, ClassifierTaskConfig, ControlTask,
                    ControlTaskConfig, DiffusionTask,
                    DiffusionTaskConfig, FeatureTask, FeatureTaskConfig, default_network, network_for_shape)

__all__ = ["RunConfig", "TaskConfig", "TrainConfig", "Engine", "NonFiniteLossError", "StepBatches", "learning_rate",
           "read_metrics", "prepare", "resolve", "train", "RunFolderError", "TASKS", "Task", "register", "task_class", "AutoencoderTask",
           "AutoencoderTaskConfig", "ClassifierTask", "ClassifierTaskConfig", "ControlTask", "ControlTaskConfig",
           "DiffusionTask", "DiffusionTaskConfig",
           "FeatureTask", "FeatureTaskConfig", "default_network", "network_for_shape"]
