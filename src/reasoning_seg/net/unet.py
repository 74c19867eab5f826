"""MinkowskiNet14-style sparse U-Net and the heads MLLM-For3D trains with it (§3.2, §3.3, A.3).

What the paper fixes (Appendix A.2/A.3): the backbone is MinkowskiEngine's "MinkowskiNet14"
U-Net (encoder-decoder with skip connections between corresponding scales), BatchNorm with
momentum 0.05 after each convolution followed by ReLU, 512-d features per occupied voxel, voxel size
0.05 m, and "only the 3D network and projection layers are trainable" (§3.2).

What it leaves open, and what :class:`UNetConfig` takes from MinkowskiEngine's ``MinkUNet14``
definition (the network the paper names): one BasicBlock per stage (``layers = (1,) * 8``), four
kernel-2 stride-2 down-samplings (coarsest tensor stride 16) and four transposed convolutions
back, channel plan ``planes = (32, 64, 128, 256, 256, 128, 96, 96)`` (encoder stages 1-4, decoder
stages 5-8), a 32-channel stem with a 5^3 kernel, 3^3 kernels inside the blocks, and a final 1x1
convolution with bias to ``out_channels``. Every one of these is configurable.

The U-Net only calls the layer classes of :mod:`reasoning_seg.net.sparse_conv`, so another sparse
backend can replace that module without touching this one.

Heads (§3.2/§3.3):

- :class:`QueryHead`: the "learned linear projection" of the 256-d unified ``[SEG]`` embedding into
  the point-feature space. Training logits are the dot product of the projected embedding and the
  point feature (Eq. 1); at inference the paper thresholds a probability determined by their cosine
  similarity, without saying how cosine becomes a probability: here ``sigmoid(scale * cos)``.
- :class:`SpatialProjection`: Eq. 2 compares 3D point features with 256-d SAM encoder features by
  cosine; the paper's features are 512-d and it trains "projection layers" (plural), so a learned
  linear map takes point features into the SAM space (see the class for why that direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812  (the usual PyTorch alias)
from torch import Tensor, nn

from reasoning_seg.net.sparse_conv import (
    SparseBatchNorm,
    SparseReLU,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    sparse_cat,
)

MINKUNET14_PLANES: tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96)
"""MinkowskiEngine's ``MinkUNet14`` channel plan (its ``MinkUNet14A`` variant uses 128 at stage 5)."""


@dataclass(frozen=True)
class UNetConfig:
    """Shape and BatchNorm settings of :class:`SparseUNet` (defaults: MinkowskiNet14 of A.3).

    Attributes:
        in_channels: input feature channels per voxel (3 for colour; + 3 for normals or xyz).
        out_channels: per-voxel feature dimension D (512 in A.3).
        init_dim: channels of the stem convolution (full resolution, kept for the last skip).
        planes: output channels of the 8 stages: encoder at strides 2, 4, 8, 16, decoder at 8, 4, 2, 1.
        layers: BasicBlocks per stage (all 1 for "14"; all 2 gives MinkUNet18-like depth).
        stem_kernel: odd kernel size of the stem convolution (5 in MinkowskiEngine's MinkUNet).
        block_kernel: odd kernel size inside the BasicBlocks.
        bn_momentum: BatchNorm momentum, PyTorch convention (0.05 in A.3).
    """

    in_channels: int = 3
    out_channels: int = 512
    init_dim: int = 32
    planes: tuple[int, ...] = MINKUNET14_PLANES
    layers: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 1)
    stem_kernel: int = 5
    block_kernel: int = 3
    bn_momentum: float = 0.05

    def __post_init__(self) -> None:
        if len(self.planes) != 8 or len(self.layers) != 8:
            raise ValueError("planes and layers need 8 entries (4 encoder + 4 decoder stages)")
        if min(self.planes) < 1 or min(self.layers) < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("channel counts and block counts must be positive")

    @property
    def coarsest_stride(self) -> int:
        """Tensor stride of the bottleneck: translating a scene by a multiple of it changes nothing."""
        return 16


class BasicBlock(nn.Module):
    """ResNet basic block on sparse tensors: conv-BN-ReLU-conv-BN + shortcut, then ReLU.

    The shortcut is a 1x1 convolution + BatchNorm when the channel count changes (as in
    MinkowskiEngine's MinkUNet), identity otherwise.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = SubmanifoldConv3d(in_channels, out_channels, kernel_size)
        self.bn1 = SparseBatchNorm(out_channels, momentum=bn_momentum)
        self.conv2 = SubmanifoldConv3d(out_channels, out_channels, kernel_size)
        self.bn2 = SparseBatchNorm(out_channels, momentum=bn_momentum)
        self.relu = SparseReLU()
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                SubmanifoldConv3d(in_channels, out_channels, 1),
                SparseBatchNorm(out_channels, momentum=bn_momentum),
            )

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Residual update of ``x`` on its own sites."""
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out.replace(out.feats + skip.feats))


def _stage(in_channels: int, out_channels: int, blocks: int, kernel: int, momentum: float) -> nn.Sequential:
    mods = [BasicBlock(in_channels, out_channels, kernel, momentum)]
    mods += [BasicBlock(out_channels, out_channels, kernel, momentum) for _ in range(blocks - 1)]
    return nn.Sequential(*mods)


class SparseUNet(nn.Module):
    """Sparse-convolution U-Net: voxel features in, per-voxel D-dim features out (same rows).

    Layout (stride in brackets): stem conv [1] -> 4 x (strided conv, BN, ReLU, stage) [2, 4, 8, 16]
    -> 4 x (transposed conv, BN, ReLU, concat with the encoder output of that stride, stage)
    [8, 4, 2, 1] -> 1x1 conv with bias. The decoder's last skip is the stem output, so every
    input voxel's feature combines full-resolution detail with context from the stride-16 level.

    Args:
        config: network shape (defaults: MinkowskiNet14 of Appendix A.3).
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        p, n, m, kb = cfg.planes, cfg.layers, cfg.bn_momentum, cfg.block_kernel
        self.stem = SubmanifoldConv3d(cfg.in_channels, cfg.init_dim, cfg.stem_kernel)
        self.stem_bn = SparseBatchNorm(cfg.init_dim, momentum=m)
        self.relu = SparseReLU()
        enc_in = [cfg.init_dim, p[0], p[1], p[2]]
        self.down = nn.ModuleList([StridedConv3d(c, c) for c in enc_in])
        self.down_bn = nn.ModuleList([SparseBatchNorm(c, momentum=m) for c in enc_in])
        self.encoder = nn.ModuleList([_stage(enc_in[i], p[i], n[i], kb, m) for i in range(4)])
        # Decoder stage i up-samples to the stride of encoder output skip[i] and concatenates it.
        skips = [p[2], p[1], p[0], cfg.init_dim]
        up_in = [p[3], p[4], p[5], p[6]]
        self.up = nn.ModuleList([TransposedConv3d(up_in[i], p[4 + i]) for i in range(4)])
        self.up_bn = nn.ModuleList([SparseBatchNorm(p[4 + i], momentum=m) for i in range(4)])
        self.decoder = nn.ModuleList(
            [_stage(p[4 + i] + skips[i], p[4 + i], n[4 + i], kb, m) for i in range(4)]
        )
        self.final = SubmanifoldConv3d(p[7], cfg.out_channels, 1, bias=True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        """Features for every input site, on the input's coordinate map (row ``i`` is site ``i``).

        Raises:
            ValueError: if the input is not at stride 1 or has the wrong channel count.
        """
        if x.stride != 1:
            raise ValueError("SparseUNet takes input voxels at tensor stride 1")
        if x.feats.shape[1] != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} input channels, got {x.feats.shape[1]}")
        out = self.relu(self.stem_bn(self.stem(x)))
        skips = [out]
        for down, bn, stage in zip(self.down, self.down_bn, self.encoder, strict=True):
            out = stage(self.relu(bn(down(out))))
            skips.append(out)
        skips.pop()  # the bottleneck output is not a skip
        for up, bn, stage in zip(self.up, self.up_bn, self.decoder, strict=True):
            skip = skips.pop()
            out = stage(sparse_cat(self.relu(bn(up(out, skip))), skip))
        return self.final(out)


class QueryHead(nn.Module):
    """Projects the unified ``[SEG]`` embedding into the point-feature space and scores points.

    §3.2: "we first map it using a learned linear projection due to differences in the dimensions of
    the modality", logits are the dot product of the projected embedding and the point features
    (trained with Eq. 1). §3.3: at inference "cosine similarity between [the point features and the
    projected embedding] determines each point's probability"; the mapping is not given, so this
    head uses ``sigmoid(cosine_scale * cos)``. Its 0.5 level is ``cos = 0``, the same boundary as
    the training logit's sign, so threshold 0.5 needs no calibration; ``cosine_scale`` only sets how
    sharp the probabilities are.

    Args:
        embed_dim: dimension of the ``[SEG]`` embedding (256 for LISA's projected token).
        feature_dim: dimension D of the U-Net's point features.
        bias: add a bias to the projection. Off by default: a bias ``b`` adds ``<b, f>`` to every
            point's logit whatever the query, a query-independent "objectness" term the paper's
            dot product does not have.
        cosine_scale: inverse temperature of the inference probability (our choice: 10 maps
            cos 0.3 to p 0.95).
    """

    def __init__(
        self, embed_dim: int = 256, feature_dim: int = 512, bias: bool = False, cosine_scale: float = 10.0
    ):
        super().__init__()
        self.proj = nn.Linear(embed_dim, feature_dim, bias=bias)
        self.cosine_scale = float(cosine_scale)

    def project(self, embedding: Tensor) -> Tensor:
        """(E,) or (B, E) ``[SEG]`` embeddings -> (D,) or (B, D) queries in the point-feature space."""
        return self.proj(embedding)

    def _per_point_query(self, embedding: Tensor, n: int, batch_index: Tensor | None) -> Tensor:
        q = self.project(embedding)
        if q.dim() == 1:
            return q.expand(n, -1)
        if batch_index is None:
            if q.shape[0] != 1:
                raise ValueError("several embeddings need batch_index (the scene of every point)")
            return q.expand(n, -1)
        return q[batch_index]

    def logits(self, feats: Tensor, embedding: Tensor, batch_index: Tensor | None = None) -> Tensor:
        """Per-point logits ``<W h_b, f_i>`` (Eq. 1's 3D logits).

        Args:
            feats: (N, D) point features.
            embedding: (E,) one query for all points, or (B, E) one per scene of the batch.
            batch_index: (N,) scene of each point (``coords[:, 0]``), needed with (B, E) embeddings.

        Returns:
            (N,) logits.
        """
        return (feats * self._per_point_query(embedding, feats.shape[0], batch_index)).sum(dim=1)

    def cosine(self, feats: Tensor, embedding: Tensor, batch_index: Tensor | None = None) -> Tensor:
        """(N,) cosine similarity between point features and the projected embedding (§3.3)."""
        q = self._per_point_query(embedding, feats.shape[0], batch_index)
        return F.cosine_similarity(feats, q, dim=1, eps=1e-8)

    def probabilities(self, feats: Tensor, embedding: Tensor, batch_index: Tensor | None = None) -> Tensor:
        """(N,) inference probabilities ``sigmoid(cosine_scale * cos)`` (§3.3)."""
        return torch.sigmoid(self.cosine_scale * self.cosine(feats, embedding, batch_index))

    def predict(
        self, feats: Tensor, embedding: Tensor, threshold: float = 0.5, batch_index: Tensor | None = None
    ) -> Tensor:
        """(N,) bool mask: points whose probability exceeds ``threshold`` (§3.3)."""
        return self.probabilities(feats, embedding, batch_index) > threshold


class SpatialProjection(nn.Module):
    """Learned linear map from D-dim point features into the C-dim SAM feature space (Eq. 2).

    Why project the 3D side: the SAM features are frozen targets; a learned map on them could
    squash all pixels onto few directions (a rank-1 map makes every cosine +-1) and satisfy Eq. 2
    without the 3D features learning anything. Mapping the trainable 3D features into the fixed SAM
    space keeps the target informative. With ``feature_dim == image_dim`` and ``learned=False`` it
    is the identity (the paper's literal ``cos(f_p, g)``).

    Args:
        feature_dim: D of the U-Net.
        image_dim: C of the sampled SAM encoder features (256).
        learned: learn the map; if False, requires equal dimensions and is the identity.
    """

    def __init__(self, feature_dim: int = 512, image_dim: int = 256, learned: bool = True) -> None:
        super().__init__()
        if not learned and feature_dim != image_dim:
            raise ValueError("an identity spatial projection needs feature_dim == image_dim")
        self.proj: nn.Module = nn.Linear(feature_dim, image_dim, bias=False) if learned else nn.Identity()

    def forward(self, feats: Tensor) -> Tensor:
        """(N, D) point features -> (N, C) in the SAM feature space."""
        return self.proj(feats)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters: the size reported for a configuration."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
