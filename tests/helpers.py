"""Small helpers shared by test modules."""
import csv
import re
from typing import NamedTuple


class Built(NamedTuple):
    """What a `flowshard build` reports: the version id (its last line), the videos it computed
    and copied from earlier versions, and the whole output."""

    version: str
    computed: int
    copied: int
    output: str


def invoke(*args):
    """Run the flowshard CLI in-process on `args` (each passed through str()): the click Result,
    whatever the exit code."""
    from click.testing import CliRunner

    from jobs.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def flowshard(*args) -> str:
    """Run the CLI on `args`, which must succeed; its output. A failure shows the output and the
    exception, since a CliRunner swallows both."""
    result = invoke(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def build(input_path, output, *args) -> str:
    """`flowshard build INPUT OUTPUT --no-progress ARGS...` (no progress bars in the captured
    output); its output."""
    return flowshard("build", input_path, output, "--no-progress", *args)


def version_id(output: str) -> str:
    """The version id a build prints as its last line."""
    return output.strip().splitlines()[-1]


def build_summary(input_path, output, *args) -> Built:
    """build(...) and the numbers its summary line reports."""
    text = build(input_path, output, *args)
    m = re.search(r"(\d+) video\(s\) computed, (\d+) copied", text)
    assert m, text
    return Built(version_id(text), int(m.group(1)), int(m.group(2)), text)


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
