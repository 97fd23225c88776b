"""bitnet.training: data pipeline, tokenizer training, schedules and the accelerate training loop.

    from bitnet.training import train, load_config
    run_dir = train(load_config("configs/train/shakespeare.yaml", ["max_steps=100"]))
"""

from .config import DataConfig, LogConfig, OptimConfig, TrainConfig, load_config
from .dataset import bundled_text
from .loop import checkpoint_step, latest_checkpoint, train

__all__ = ["train", "load_config", "TrainConfig", "DataConfig", "OptimConfig", "LogConfig",
           "latest_checkpoint", "checkpoint_step", "bundled_text"]
