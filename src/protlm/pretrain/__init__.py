"""Pretraining: configs, batching, objectives, optimizers, the distributed training loop."""

from protlm.pretrain.config import PretrainConfig, load_config
from protlm.pretrain.trainer import Trainer, pretrain

__all__ = ["PretrainConfig", "Trainer", "load_config", "pretrain"]
