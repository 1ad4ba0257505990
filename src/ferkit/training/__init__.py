"""Training: configs, batch augmentation, the training loop with resumable checkpoints, and tuning."""

from ferkit.training.config import TrainConfig, load_config
from ferkit.training.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "load_config", "train"]
