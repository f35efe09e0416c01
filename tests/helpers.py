"""Small helpers shared by test modules."""
import csv


def write_list(path, rows):
    """Write a path,label,split CSV list (flowshard's list input) and return its path."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


def model_params(model) -> int:
    """Parameters of a torch module (counted on any device, meta included)."""
    return sum(p.numel() for p in model.parameters())


def on_meta(**kw):
    """An RGB model of ModelConfig(**kw) built on the meta device: paper-size parameter counts
    and layer shapes without allocating or initialising anything."""
    import torch

    from training.models import ModelConfig, build_model

    with torch.device("meta"):
        return build_model(ModelConfig(streams="rgb", **kw))


def rgb_batch(b=2, v=1, k=1, frames=1, size=32):
    """A random RGB batch in the training layout (B, V, K, 3F, S, S)."""
    import torch

    return {"rgb": torch.randn(b, v, k, 3 * frames, size, size)}
