"""Training: configuration, the trainer (EMA, checkpoints, resume, DDP) and loading for sampling;
the autoencoder of latent diffusion and its trainer; the noise-aware classifier of classifier
guidance and its trainer."""

from .autoencoder import (AutoencoderTrainConfig, AutoencoderTrainer, LatentCodec, load_autoencoder,
                          open_autoencoder, train_autoencoder)
from .classifier import ClassifierTrainConfig, ClassifierTrainer, load_classifier, train_classifier
from .config import TrainConfig, default_network
from .sampling import caption_loss_rise, exact_caption_accuracy, generate, sample_caption_errors
from .loop import NonFiniteLossError
from .trainer import Trainer, build_model, load_model, train

__all__ = ["TrainConfig", "default_network", "Trainer", "train", "build_model", "load_model",
           "generate", "exact_caption_accuracy", "sample_caption_errors", "caption_loss_rise", "NonFiniteLossError",
           "AutoencoderTrainConfig", "AutoencoderTrainer",
           "train_autoencoder", "load_autoencoder", "open_autoencoder", "LatentCodec",
           "ClassifierTrainConfig", "ClassifierTrainer", "train_classifier", "load_classifier"]
