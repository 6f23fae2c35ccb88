"""Constants shared by every part of fer-edge."""
from __future__ import annotations

#: FER2013 label order: the ``emotion`` column and the class index everywhere.
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(LABELS)
IMAGE_SIZE = 48
#: The devices training and evaluation run on (``--device`` of fer-edge train, eval and the training scripts).
TRAIN_DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
#: Pixels per image in the Kaggle CSV's ``pixels`` column.
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
