"""Training: the recipes (`train` behind `modetune train`, `pretrain` behind `modetune pretrain`), their configs,
the run-directory helpers they share, and `MethodTrainer`."""

from modetune.training.config import TrainConfig
from modetune.training.recipe import TrainResult, train
from modetune.training.trainer import MethodTrainer, TrainingDivergedError, latest_complete_checkpoint

__all__ = [
    "MethodTrainer",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "latest_complete_checkpoint",
    "train",
]
