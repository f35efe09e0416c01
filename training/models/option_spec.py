"""The command-line options a model family declares, as data, and the ones several share.

A family module lists its options in `OPTIONS` (a tuple of OptionSpec) and turns their
parsed values into its Options with `options_from_cli(values)`; jobs.model_options makes
click options of them (training stays free of the CLI). An option several families take
(--width-mult, --fc-dim) is declared once, here, and listed by each of them; its help
text names the families that list it, in training.models.FAMILIES order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TYPES = (str, int, float, bool)


@dataclass(frozen=True, kw_only=True)
class OptionSpec:
    """One option: `flag` "fusion-type" is --fusion-type (a bool: --fusion-type/--no-fusion-type),
    its value reaches options_from_cli as values["fusion_type"]. `help` leaves out the
    families' names (the CLI prefixes them); `choices` limits a str option's values."""

    flag: str
    type: type = str
    default: Any = None
    help: str
    choices: tuple[str, ...] | None = None
    show_default: bool = True

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option --{self.flag}: type must be one of {TYPES}, got {self.type!r}")
        if self.choices is not None and (self.type is not str or self.default not in self.choices):
            raise ValueError(
                f"option --{self.flag}: choices need a str option whose default is one of them, "
                f"got {self.type.__name__} default {self.default!r} of {self.choices}"
            )

    @property
    def key(self) -> str:
        """The name of the option's value in the parsed values."""
        return self.flag.replace("-", "_")


WIDTH_MULT = OptionSpec(
    flag="width-mult", type=float, default=1.0, help="channel width multiplier of the convolutions (1: the paper's)."
)
FC_DIM = OptionSpec(
    flag="fc-dim",
    type=int,
    default=None,
    show_default=False,
    help="width of the first fully connected layer (default: the paper's, 4096; fstcn's second is half of it).",
)
PAPER_FC_DIM = 4096  # what --fc-dim left unset gives
