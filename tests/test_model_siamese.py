"""The Siamese precondition/effect model: split ranges, E-step, contrastive loss, scores."""
from __future__ import annotations

import pytest
import torch

from training.models import ModelConfig, build_model, siamese


@pytest.fixture(scope="module", autouse=True)
def one_thread(torch_one_thread):
    """Every test here runs with one intra-op thread (see conftest.torch_one_thread)."""


def test_siamese_split_ranges_follow_the_paper():
    assert siamese.part_lengths(8) == [3, 4] and siamese.part_lengths(9) == [3, 4]
    assert siamese.part_lengths(12) == [4, 5, 6]
    assert siamese.splits(6) == [(2, 2), (2, 3), (3, 2), (3, 3)]
    with pytest.raises(ValueError, match="snippets=1"):
        build_model(ModelConfig(model="siamese", arch="resnet18", streams="rgb", num_classes=3, snippets=1))


def test_e_step_picks_the_split_that_fits_the_label_and_the_m_step_only_uses_it():
    sims = torch.tensor([[[0.1, 0.9], [0.8, 0.2]],    # video 0: split 1 fits class 0, split 0 class 1
                         [[0.3, 0.4], [0.2, 0.7]]], requires_grad=True)
    labels = torch.tensor([0, 1])
    chosen = siamese.chosen_split(sims, labels)
    torch.testing.assert_close(chosen.detach(), torch.tensor([[0.8, 0.2], [0.2, 0.7]]))
    chosen.sum().backward()
    torch.testing.assert_close(sims.grad, torch.tensor([[[0., 0.], [1., 1.]], [[0., 0.], [1., 1.]]]))


def test_contrastive_loss_by_hand():
    sims = torch.tensor([[0.9, 0.7, 0.2], [0.6, 0.1, 0.55]])
    labels = torch.tensor([0, 2])
    # video 0: (1 - 0.9) + max(0, 0.7 - 0.5) + 0 = 0.3; video 1: (1 - 0.55) + 0.1 + 0 = 0.55
    torch.testing.assert_close(siamese.contrastive_loss(sims, labels, 0.5), torch.tensor(0.425))


def test_siamese_scores_each_class_at_its_best_split_and_fuses_rgb_and_flow():
    cfg = ModelConfig(model="siamese", arch="resnet18", streams="both", num_classes=3, clip_len=2, snippets=6,
                      options=siamese.Options(embed_dim=8))
    net = build_model(cfg).eval()
    batch = {"rgb": torch.randn(2, 2, 6, 3, 32, 32), "flow": torch.randn(2, 2, 6, 4, 32, 32)}
    out = net(batch)
    assert out["rgb"].shape == out["flow"].shape == (2, 4, 3)  # 4 splits of 6 snippets
    assert out["rgb"].abs().max() <= 1 + 1e-5
    scores = net.scores(out)
    torch.testing.assert_close(scores["rgb"], torch.softmax(out["rgb"].amax(1) / siamese.SCORE_TEMPERATURE, 1))
    assert scores["fused"].shape == (2, 3)
    loss = net.training_loss(out, torch.tensor([0, 2]), None)
    loss.backward()
    assert net.streams["rgb"].transforms.grad is not None and net.streams["flow"].pre.fc.weight.grad is not None


def test_transformations_start_near_the_identity():
    torch.manual_seed(0)
    cfg = ModelConfig(model="siamese", arch="resnet18", streams="rgb", num_classes=3, snippets=4,
                      options=siamese.Options(embed_dim=16))
    t = build_model(cfg).streams["rgb"].transforms.detach()
    assert t.shape == (3, 16, 16)
    assert (t - torch.eye(16)).abs().max() < 0.1 and not torch.equal(t[0], t[1])
