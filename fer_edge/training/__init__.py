"""Training and evaluation: ``fer-edge train`` and ``fer-edge eval``."""
from fer_edge.training.config import TrainConfig  # noqa: F401


def train(cfg, resume: bool = False, progress: bool = True, quiet: bool = False, **kwargs):
    """:func:`fer_edge.training.trainer.train` (imported when called: torch loads only then)."""
    from fer_edge.training.trainer import train as _train

    return _train(cfg, resume=resume, progress=progress, quiet=quiet, **kwargs)


def evaluate(*args, **kwargs):
    from fer_edge.training.evaluation import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
