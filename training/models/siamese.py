"""Actions as transformations (Wang, Farhadi & Gupta 2016, "Actions ~ Transformations",
arXiv 1512.00795): a Siamese network whose two heads encode a video's precondition (the
frames before the action) and its effect (the frames after it); an action is a learned
linear map from precondition to effect embeddings, and a video's class is the action whose
transformation of its precondition best matches its effect (cosine similarity).

    precondition net  frames 1 .. z_p   -> per-frame ConvNet -> average over frames -> FC -> p
    effect net        frames z_e .. t   -> per-frame ConvNet -> average over frames -> FC -> e
    class i score     cos(T_i p, e)      (T_i: one d x d matrix per class; the nets share no weights)

The split points are latent: z_p in [t/3, t/2] and z_e in [t/2, 2t/3] (the paper's ranges;
here as lengths: the first p and the last e of the clip's t snippets, p and e each in
[ceil(t/3), floor(t/2)]). Scoring searches every (p, e) pair: a class's score is its best
split's similarity. The t snippets span the whole video by default (one per TSN segment,
`--sampling tsn --segments t`, tested on clips of t snippets too), so precondition and effect
are the video's start and end as in the paper; `--sampling strided` reads a window instead. As in
the paper each modality has its own Siamese network, RGB frames
and stacked optical flow (L fields per snippet), and the two are fused late (--streams both).

Training alternates, EM style, between the split and the networks. Each step forward
computes the similarities of every split (cheap: the per-frame features are computed
once, prefix / suffix means give every split's averages); `training_loss` (called by the
training loop, training.models.base) then
    E-step  fixes the networks and picks, per video, the split whose ground-truth
            similarity is highest (no gradient flows through the choice), and
    M-step  fixes that split and returns the paper's contrastive loss, which the optimiser
            takes a step on: (1 - cos(T_y p, e)) + sum over i != y of max(0, cos(T_i p, e) - margin).

The per-frame ConvNet is a torchvision ResNet trunk (--arch; the paper used VGG-16), its
global-pooled features averaged over a part's frames; the flow stream's first conv takes
2L channels (cross-modality initialisation). T_i start at the identity (an action that
changes nothing) plus small noise that breaks the tie between classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet

from training import streams as stream_spec
from training.models.backbones import check_resnet, cross_modality_conv, load_backbone, resnet_trunk
from training.models.base import ModelConfig, VideoClassifier, late_fusion
from training.models.option_spec import OptionSpec

ORDERED_SNIPPETS = True
SCORE_TEMPERATURE = 0.1  # class probabilities = softmax(cosine / 0.1): cosines lie in [-1, 1]
# Wang et al. 2016: RGB and flow Siamese networks on T snippets in time order over the
# whole video (one per TSN segment), which the latent split cuts into precondition and effect.
INPUT = {"streams": "both", "sampling": "tsn", "segments": 8}


@dataclass(frozen=True, kw_only=True)
class Options:
    """Embedding size d, the contrastive loss's margin, the transformations' initial noise."""

    embed_dim: int = 512
    margin: float = 0.5
    init_noise: float = 0.01

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {self.embed_dim}")
        if not -1 <= self.margin < 1 or self.init_noise < 0:
            raise ValueError(f"margin must be in [-1, 1) and init_noise >= 0, got {self.margin}, {self.init_noise}")


OPTIONS = (
    OptionSpec(flag="embed-dim", type=int, default=512, help="size of the precondition and effect embeddings."),
    OptionSpec(
        flag="margin", type=float, default=0.5, help="cosine margin of the contrastive loss for the wrong actions."
    ),
)


def options_from_cli(values: dict) -> Options:
    """The Options the parsed command-line values (OPTIONS' keys) describe."""
    return Options(embed_dim=values["embed_dim"], margin=values["margin"])


def check(cfg: ModelConfig) -> None:
    """Raise ValueError naming the first setting the Siamese model cannot build."""
    check_resnet(cfg.arch, "siamese")
    if cfg.snippets < 2:
        raise ValueError(
            f"siamese splits a clip of T >= 2 snippets into precondition and effect: use "
            f"--sampling tsn --segments T (the whole video) or --sampling strided --snippets T, "
            f"got snippets={cfg.snippets}"
        )
    if cfg.rgb_frames != 1:
        raise ValueError(f"siamese encodes one RGB frame per snippet, got rgb_frames={cfg.rgb_frames}")


def part_lengths(snippets: int) -> list[int]:
    """Lengths a precondition (or effect) part may take: ceil(t/3) .. floor(t/2) snippets."""
    lo, hi = math.ceil(snippets / 3), snippets // 2
    return list(range(lo, max(lo, hi) + 1))


def splits(snippets: int) -> list[tuple[int, int]]:
    """Every (precondition length p, effect length e): the first p and the last e snippets."""
    lengths = part_lengths(snippets)
    return [(p, e) for p in lengths for e in lengths]


class Encoder(nn.Module):
    """Per-frame ResNet trunk + global pooling; a part's embedding = FC(mean over its frames)."""

    def __init__(self, cfg: ModelConfig, stream: str, embed_dim: int):
        super().__init__()
        backbone = cast(ResNet, load_backbone(cfg.arch, cfg.weights))  # ResNets only: `check` refuses VGG-16
        if stream in stream_spec.FIELD_STREAMS:  # flow and warped flow: 2L channels
            backbone.conv1 = cross_modality_conv(backbone.conv1, 2 * cfg.clip_len)
        self.trunk = resnet_trunk(backbone)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(backbone.fc.in_features, embed_dim)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n, C, H, W) frames -> (N, n, D) pooled features."""
        maps = self.trunk(x.flatten(0, 1))
        return maps.mean((2, 3)).unflatten(0, x.shape[:2])

    def embed(self, means: torch.Tensor) -> torch.Tensor:
        """(..., D) frame-feature means -> (..., d) part embeddings."""
        return self.fc(self.dropout(means))


class SiameseStream(nn.Module):
    """One modality's precondition and effect networks and its class transformations."""

    def __init__(self, cfg: ModelConfig, stream: str, opts: Options):
        super().__init__()
        self.pre = Encoder(cfg, stream, opts.embed_dim)
        self.eff = Encoder(cfg, stream, opts.embed_dim)
        eye = torch.eye(opts.embed_dim).expand(cfg.num_classes, -1, -1)
        self.transforms = nn.Parameter(
            eye + opts.init_noise * torch.randn(cfg.num_classes, opts.embed_dim, opts.embed_dim)
        )
        self.lengths = part_lengths(cfg.snippets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, C, H, W) -> (N, S, classes) cosines of every split (`splits(T)` order)."""
        longest = self.lengths[-1]
        pre = self.pre.frames(x[:, :longest]).cumsum(1)  # prefix sums: first p frames
        eff = self.eff.frames(x[:, -longest:]).flip(1).cumsum(1)  # suffix sums: last e frames
        idx = torch.tensor([n - 1 for n in self.lengths], device=x.device)
        count = torch.tensor(self.lengths, dtype=pre.dtype, device=x.device)[:, None]
        p = self.pre.embed(pre[:, idx] / count)  # (N, P, d)
        e = self.eff.embed(eff[:, idx] / count)  # (N, E, d)
        moved = torch.einsum("kij,npj->npki", self.transforms, p)  # T_k p: (N, P, classes, d)
        sims = F.cosine_similarity(moved[:, :, None], e[:, None, :, None], dim=-1)  # (N, P, E, classes)
        return sims.flatten(1, 2)


class Siamese(VideoClassifier):
    """forward({"rgb": (B, V, T, 3, S, S), "flow": (B, V, T, 2L, S, S)}) ->
    {stream: (B, splits, classes)}: the cosine of every class at every split, averaged over
    views (any streams of training.streams; warped flow like flow). `scores` takes each
    class's best split; `training_loss` runs the EM step."""

    ordered_snippets = ORDERED_SNIPPETS

    def __init__(self, cfg: ModelConfig):
        check(cfg)
        super().__init__(cfg)
        self.opts = cfg.options or Options()
        self.streams = nn.ModuleDict({s: SiameseStream(cfg, s, self.opts) for s in cfg.stream_names})

    def score_units(self, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{stream: (N, T, C, H, W)} clips -> {stream: (N, splits, classes)} cosines."""
        out = {}
        for name, stream in self.streams.items():
            t = units[name].shape[1]
            if t != self.cfg.snippets:
                raise ValueError(f"siamese was built for clips of {self.cfg.snippets} snippets, got {t}")
            out[name] = stream(units[name])
        return out

    def scores(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each class's best-split cosine, as softmax(cos / SCORE_TEMPERATURE); rgb and flow fused late."""
        best = {name: sims.float().amax(1) for name, sims in logits.items()}
        return late_fusion(
            {name: torch.softmax(s / SCORE_TEMPERATURE, dim=1) for name, s in best.items()},
            self.cfg.settled_fusion_weights,
        )

    def training_loss(self, logits: dict[str, torch.Tensor], labels: torch.Tensor, criterion) -> torch.Tensor:  # noqa: ARG002 (VideoClassifier's signature)
        """E-step (best split for the true class, networks fixed) then the M-step's contrastive
        loss at that split, summed over streams. `criterion` (cross-entropy) is not used."""
        # sum() starts from the int 0, so it reads as "Tensor | int"; every term is a tensor
        return cast(
            torch.Tensor,
            sum(
                contrastive_loss(chosen_split(sims.float(), labels), labels, self.opts.margin)
                for sims in logits.values()
            ),
        )


def chosen_split(sims: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """E-step: (B, S, N) cosines -> (B, N) at each video's split that best fits its label.

    The choice is made on detached values: the split is a latent variable fixed for the
    M-step, not a function the gradient flows through (the max's gradient would be the same,
    but the EM reading keeps the two steps apart)."""
    with torch.no_grad():
        best = sims.gather(2, labels[:, None, None].expand(-1, sims.shape[1], 1)).squeeze(2).argmax(1)
    return sims[torch.arange(len(sims), device=sims.device), best]


def contrastive_loss(sims: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the batch of (1 - cos_y) + sum_{i != y} max(0, cos_i - margin)."""
    positive = sims.gather(1, labels[:, None]).squeeze(1)
    others = F.relu(sims - margin).scatter(1, labels[:, None], 0.0)
    return (1.0 - positive + others.sum(1)).mean()


def build(cfg: ModelConfig) -> Siamese:
    """The Siamese precondition/effect network of `cfg` (one per stream)."""
    return Siamese(cfg)
