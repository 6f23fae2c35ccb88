"""The training configuration carried by every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainConfig:
    data: str
    model: str = "custom_cnn"
    out: str = "runs/run"
    model_kwargs: dict = field(default_factory=dict)
    split: str | None = None  # None: "Training" for the CSV, "train" for folders
    val_split: str | None = None  # None: "PublicTest" for the CSV, "val"/"test" for folders
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
    ema: float = 0.0  # decay; 0 disables
    augment: str = "standard"  # none | light | standard | strong
    init: str | None = None  # start from this checkpoint's weights (fine-tuning)
    distill: list[str] = field(default_factory=list)  # teacher checkpoints; their probabilities are averaged
    distill_tta: bool = False  # teachers also see the horizontally flipped batch (averaged in)
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
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

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("distill"), str):  # configs before ensembles held one path
            d["distill"] = [d["distill"]]
        elif d.get("distill") is None:
            d.pop("distill", None)
        return cls(**d)
