"""Training the native local-global model: data (clean text + synthetic recall), the loop, the tiny presets.

    from rattn_eval.train import TrainConfig, train, build_dataset, train_tiny
"""

from .data import Batches, build_dataset, evaluation_phrases, select_documents
from .tiny import TINY_NAMES, tiny_config, train_tiny
from .trainer import TrainConfig, train

__all__ = ["Batches", "TINY_NAMES", "TrainConfig", "build_dataset", "evaluation_phrases", "select_documents",
           "tiny_config", "train", "train_tiny"]
