"""Options of the label-free 3D network beyond the paper's defaults.

Class-balanced Eq. 1, the height input channel, AdamW: each is checked against hand-computed
values, and the paper's behaviour stays the default where the paper gives one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from reasoning_seg.net.losses import LabelFreeLoss, PointViewPairs, alignment_loss, balanced_pair_weights
from reasoning_seg.net.model import HEIGHT_OFFSET, UNET_PRESETS, LabelFree3DNet, NetConfig, voxelise
from reasoning_seg.net.train import LabelFreeModule, LossConfig, OptimConfig


def test_balanced_weights_give_each_class_half_of_each_group():
    t = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    w = balanced_pair_weights(t, g, 2)
    # group 0: one positive (mass 1) and three negatives (mass 3) -> 1/2 and 1/6 each
    assert torch.allclose(w[:4], torch.tensor([0.5, 1 / 6, 1 / 6, 1 / 6]))
    # group 1: a soft pair 0.5 (pos mass 0.5, neg mass 0.5 + 1) -> 0.5*0.5/0.5 + 0.5*0.5/1.5
    assert torch.allclose(w[4:], torch.tensor([0.5 + 1 / 6, 1 / 3]))
    # hard targets: the target pairs and the background pairs each carry half of the group's weight
    m = g == 0
    assert torch.isclose((w[m] * t[m]).sum(), torch.tensor(0.5))
    assert torch.isclose((w[m] * (1 - t[m])).sum(), torch.tensor(0.5))


def test_balanced_alignment_equals_the_hand_computed_weighted_bce():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    target_logit = torch.tensor([4.0, -4.0, -4.0, -4.0])
    pts = torch.arange(4)
    t = torch.sigmoid(target_logit)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    w = 0.5 * t / t.sum() + 0.5 * (1 - t) / (1 - t).sum()
    expected = (w * bce).sum() / w.sum()
    got = alignment_loss(logits, pts, target_logit, None, True, torch.zeros(4, dtype=torch.int64), 1)
    assert torch.isclose(got, expected)
    plain = alignment_loss(logits, pts, target_logit)
    assert torch.isclose(plain, bce.mean()) and not torch.isclose(plain, got)
    # the same through the module, and off by default
    pairs = PointViewPairs(pts, target_logit)
    assert torch.isclose(LabelFreeLoss(use_spatial=False)(logits, None, pairs).align, bce.mean())
    on = LabelFreeLoss(use_spatial=False, balance_alignment=True)(logits, None, pairs).align
    assert torch.isclose(on, expected)
    assert LossConfig().balance_alignment is False


def test_height_channel_is_metres_above_the_lowest_voxel():
    pts = np.array([[0.0, 0.0, 0.01], [0.0, 0.0, 0.02], [0.5, 0.0, 1.03], [0.0, 0.5, 2.51]])
    cols = np.full((4, 3), 0.5)
    v3 = voxelise(pts, cols, 0.1)
    v4 = voxelise(pts, cols, 0.1, height=True)
    assert v3.feats.shape == (3, 3) and v4.feats.shape == (3, 4)
    np.testing.assert_array_equal(v4.feats[:, :3], v3.feats)
    heights = {tuple(c): h for c, h in zip(v4.coords.tolist(), v4.feats[:, 3].tolist(), strict=True)}
    assert heights[(0, 0, 0)] == pytest.approx(-HEIGHT_OFFSET)
    assert heights[(5, 0, 10)] == pytest.approx(1.0 - HEIGHT_OFFSET)
    assert heights[(0, 5, 25)] == pytest.approx(2.5 - HEIGHT_OFFSET)
    assert voxelise(np.zeros((0, 3)), np.zeros((0, 3)), 0.1, height=True).feats.shape == (0, 4)


def test_height_input_network_predicts_and_round_trips(tmp_path):
    unet = dataclasses.replace(UNET_PRESETS["tiny"], in_channels=4)
    net = LabelFree3DNet(NetConfig(unet=unet, voxel_size=0.1))
    assert net.config.height_input
    rng = np.random.default_rng(0)
    pts, cols = rng.uniform(0, 2, (500, 3)), rng.uniform(0, 1, (500, 3))
    emb = rng.standard_normal(256).astype(np.float32)
    p = net.predict(pts, cols, emb)
    assert p.shape == (500,) and np.all((p >= 0) & (p <= 1))
    net.save(tmp_path / "m.pt")
    again = LabelFree3DNet.load(tmp_path / "m.pt")
    assert again.config.height_input
    np.testing.assert_allclose(again.predict(pts, cols, emb), p, atol=1e-6)
    with pytest.raises(ValueError, match="in_channels"):
        NetConfig(unet=dataclasses.replace(unet, in_channels=5))


def test_adamw_is_selectable_and_bad_names_are_refused():
    module = LabelFreeModule(
        NetConfig(unet=UNET_PRESETS["tiny"]).to_dict(),
        dataclasses.asdict(OptimConfig(lr=1e-3, optimizer="adamw", schedule="none")),
        dataclasses.asdict(LossConfig(use_spatial=False)),
    )
    assert isinstance(module.configure_optimizers(), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer"):
        OptimConfig(optimizer="lion")


def test_experiment_variants_extra_rows_only_when_named_and_gpu_scale_exists():
    from reasoning_seg.net.experiment import SCALES, _variants, build_parser, main, scale_from_args

    assert [v.key for v in _variants(None)] == ["full", "no_tfq", "no_spatial"]
    (extra,) = _variants(["full_balanced"])
    assert extra.balance_alignment and extra.use_align and extra.use_spatial
    assert main(["--variants", "nonsense", "--out", "/nonexistent"]) == 2
    gpu = scale_from_args(build_parser().parse_args(["--scale", "gpu", "--steps", "7"]))
    assert gpu.name == "gpu" and gpu.steps == 7 and gpu.accelerator == "gpu"
    assert not set(gpu.train_seeds) & set(gpu.test_seeds) and SCALES["cpu"].width == gpu.width
    # The SIMULATED [SEG] embedding's instance weight reaches every room's pipeline config.
    assert gpu.base_params()["segmenter.sim_instance_weight"] == 0.0
    old = scale_from_args(build_parser().parse_args(["--scale", "gpu", "--instance-weight", "0.8"]))
    assert old.instance_weight == 0.8 and old.base_params()["segmenter.sim_instance_weight"] == 0.8
    fused, truth = _variants(["full_fused", "with_gt"])
    assert (fused.alignment_target, truth.alignment_target) == ("fused", "truth")
