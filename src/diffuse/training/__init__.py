"""Training: configuration, the trainer (EMA, checkpoints, resume, DDP) and loading for sampling."""

from .config import TrainConfig, default_network
from .sampling import generate
from .trainer import NonFiniteLossError, Trainer, build_model, load_model, train

__all__ = ["TrainConfig", "default_network", "Trainer", "train", "build_model", "load_model",
           "generate", "NonFiniteLossError"]
