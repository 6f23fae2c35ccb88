"""The training configuration carried by every checkpoint."""
from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass, field, fields

from fer_edge.errors import TrainingError


@dataclass
class TrainConfig:
    data: str
    model: str = "custom_cnn"
    out: str = "runs/run"
    model_kwargs: dict = field(default_factory=dict)
    split: str | None = None  # None: "Training" for the CSV, "train" for folders
    val_split: str | None = None  # None: "PublicTest" for the CSV, "val"/"PublicTest" for folders (never a test split)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # adamw | sgd | adam
    scheduler: str = "onecycle"  # onecycle | cosine | step | none
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str = "none"  # none | balanced | sqrt
    mixup: float = 0.0  # alpha; 0 disables
    cutmix: float = 0.0  # alpha; 0 disables
    mix_prob: float = 1.0  # probability that a batch is mixed (MixUp or CutMix) at all
    ema: float = 0.0  # decay; 0 disables
    augment: str = "standard"  # none | light | standard | strong
    init: str | None = None  # start from this checkpoint's weights (fine-tuning)
    distill: list[str] = field(default_factory=list)  # teacher checkpoints; their probabilities are averaged
    distill_tta: bool = False  # teachers also see the horizontally flipped batch (averaged in)
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    teacher_runtime: str = "auto"  # auto | torch | onnxruntime: where --distill teachers run (auto: ORT on CPU)
    distill_targets: str = "online"  # online: each augmented batch | offline: each image once, clean | replay
    distill_views: int | None = None  # replay: augmented views per image (None: replay.DEFAULT_REPLAY_VIEWS)
    distill_cache: str | None = None  # replay: keep the views and their targets in this file, reuse it if it fits
    qat: bool = False  # simulate INT8 rounding in the training forward pass (fer_edge.training.qat)
    patience: int = 0  # epochs without val improvement before stopping; 0 disables
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto | off | bf16 | fp16
    channels_last: bool = True
    num_threads: int = 0  # 0: torch default
    wandb: str | None = None
    max_steps_per_epoch: int = 0  # 0: the whole split; for smoke tests and quick recipes
    val_every: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    def command(self) -> str:
        """The ``fer-edge train`` command line that runs this configuration (options left at defaults omitted)."""
        defaults = TrainConfig(data=self.data)
        parts = ["fer-edge", "train", "--data", self.data, "--model", self.model, "--out", self.out]
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in ("data", "model", "out") or value == getattr(defaults, name):
                continue
            if name == "val_every":
                raise TrainingError(f"val_every={value} has no fer-edge train option, so no command runs this config")
            flag = option_flag(name)
            if name == "distill":
                for teacher in value:
                    parts += [flag, teacher]
            elif isinstance(value, bool):
                parts.append(flag if value else "--no-" + flag[2:])
            elif name == "model_kwargs":
                parts += [flag, json.dumps(value)]
            elif value is not None:
                parts += [flag, str(value)]
        return shlex.join(parts)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("distill"), str):  # configs before ensembles held one path
            d["distill"] = [d["distill"]]
        elif d.get("distill") is None:
            d.pop("distill", None)
        return cls(**d)


#: TrainConfig fields whose ``fer-edge train`` option has another name.
_CLI_NAMES = {"num_threads": "threads"}


def option_flag(name: str) -> str:
    """The ``fer-edge train`` option of a TrainConfig field (``num_threads`` -> ``--threads``)."""
    return "--" + _CLI_NAMES.get(name, name).replace("_", "-")
