"""Training: `TrainConfig`, the Trainer subclass, and the recipe `train()` behind `modetune train`."""

from modetune.training.config import TrainConfig
from modetune.training.recipe import TrainResult, train
from modetune.training.trainer import MoDETrainer, TrainingDivergedError, latest_complete_checkpoint

__all__ = ["MoDETrainer", "TrainConfig", "TrainResult", "TrainingDivergedError", "latest_complete_checkpoint", "train"]
