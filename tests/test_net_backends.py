"""net.backend: spconv-triton's kernels behind the U-Net's layers, against the pure-PyTorch reference.

The CPU part (every CI run): backend resolution, the weight-layout conversion and the content of the
spconv pairs built from our kernel maps (each pair joins sites exactly one kernel offset apart). The
CUDA part needs a GPU, because spconv-triton's GEMM has no CPU kernels; it runs there with

    python -m pytest -q tests/test_net_backends.py      # on the GPU machine, spconv-triton installed

and compares forward outputs and gradients of every layer type and of a whole U-Net with the torch
path, and our layout with spconv's own modules (their own pair generation), so the kernel offset
order and the transposed-convolution convention are checked against the library, not against us.
"""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from reasoning_seg.net import spconv_backend, triton_conv  # noqa: E402
from reasoning_seg.net.sparse_conv import (  # noqa: E402
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    kernel_offsets,
    pack_coords,
    resolve_backend,
    set_backend,
)

HAS_CUDA = torch.cuda.is_available()
needs_spconv_gpu = pytest.mark.skipif(
    not (HAS_CUDA and spconv_backend.available()),
    reason="spconv-triton's kernels run on CUDA only (no GPU or no spconv-triton here)",
)


def random_sites(n: int, extent: int, seed: int, device: str = "cpu") -> torch.Tensor:
    """(n', 4) unique sites (batch 0 and 1), negative coordinates included."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(-extent, extent, (n, 3), generator=g)
    b = torch.randint(0, 2, (n, 1), generator=g)
    return torch.unique(torch.cat([b, xyz], 1), dim=0).to(device)


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "torch"
    # The fused kernel: measured the faster forward and training step on CUDA (bench/results/net.md).
    assert resolve_backend("auto", "cuda") == ("triton" if triton_conv.available() else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="runs on cuda only"):
        resolve_backend("spconv", "cpu")
    with pytest.raises(ValueError, match="unknown net backend"):
        resolve_backend("minkowski", "cpu")


def test_set_backend_reaches_every_convolution():
    from reasoning_seg.net.model import LabelFree3DNet, NetConfig
    from reasoning_seg.net.unet import UNetConfig

    net = LabelFree3DNet(NetConfig(unet=UNetConfig(out_channels=16, planes=(8,) * 8, init_dim=8)))
    assert set_backend(net, "auto") == "torch"
    convs = [m for m in net.modules() if hasattr(m, "backend")]
    assert len(convs) > 20 and all(m.backend == "torch" for m in convs)


def test_weight_layout_round_trips():
    w = torch.randn(27, 5, 7)
    krsc = spconv_backend.to_spconv_weight(w, 3)
    assert krsc.shape == (7, 3, 3, 3, 5)
    # weight[k] of offset (dx, dy, dz) is the KRSC filter at [:, dx + 1, dy + 1, dz + 1, :]
    for k, (dx, dy, dz) in enumerate(kernel_offsets(3)):
        assert torch.equal(krsc[:, dx + 1, dy + 1, dz + 1, :], w[k].T)
    assert torch.equal(spconv_backend.from_spconv_weight(krsc), w)


@pytest.mark.parametrize("stride", [1, 4])
def test_submanifold_pairs_join_sites_one_offset_apart(stride):
    sites = random_sites(600, 6, seed=stride)
    sites[:, 1:] *= stride
    x = SparseTensor.from_coords(sites, torch.zeros(len(sites), 1), stride=stride)
    pairs, counts = spconv_backend.submanifold_pairs(x.cmap, 3)
    assert pairs.shape[:2] == (2, 27) and pairs.dtype == torch.int32
    total = 0
    for k, (dx, dy, dz) in enumerate(kernel_offsets(3)):
        n = int(counts[k])
        src, dst = pairs[0, k, :n].long(), pairs[1, k, :n].long()
        assert (pairs[:, k, n:] == -1).all()
        d = sites[src] - sites[dst]
        assert (d[:, 0] == 0).all()
        assert (d[:, 1:] == torch.tensor([dx, dy, dz]) * stride).all()
        total += n
    # every (site, offset) with an occupied neighbour appears once: count them directly
    keys = {tuple(c) for c in sites.tolist()}
    expect = sum(
        (b, x_ + dx * stride, y + dy * stride, z + dz * stride) in keys
        for (b, x_, y, z) in sites.tolist()
        for dx, dy, dz in itertools.product((-1, 0, 1), repeat=3)
    )
    assert total == expect


def test_downsample_pairs_join_each_site_to_its_parent():
    sites = random_sites(500, 9, seed=3)
    x = SparseTensor.from_coords(sites, torch.zeros(len(sites), 1))
    pairs, counts = spconv_backend.downsample_pairs(x.cmap)
    coarse = x.cmap.downsample().coarse.coords
    seen = 0
    for k in range(8):
        n = int(counts[k])
        fine, parent = sites[pairs[0, k, :n].long()], coarse[pairs[1, k, :n].long()]
        off = torch.tensor([k // 4, (k // 2) % 2, k % 2])
        assert (fine[:, 1:] - parent[:, 1:] == off).all()
        assert (fine[:, 0] == parent[:, 0]).all()
        seen += n
    assert seen == len(sites)  # every fine site has exactly one parent


# ------------------------------------------------------------------------------------ CUDA part
@needs_spconv_gpu
@pytest.mark.parametrize("kernel", [3, 5])
def test_spconv_submanifold_equals_the_reference(kernel):
    torch.manual_seed(0)
    conv = SubmanifoldConv3d(16, 24, kernel).cuda()
    sites = random_sites(4000, 12, seed=1, device="cuda")
    feats = torch.randn(len(sites), 16, device="cuda")
    outs, grads = [], []
    for backend in ("torch", "spconv"):
        conv.backend = backend
        f = feats.clone().requires_grad_(True)
        conv.weight.grad = None
        y = conv(SparseTensor.from_coords(sites, f)).feats
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").reshape(y.shape)).sum().backward()
        outs.append(y.detach())
        grads.append((f.grad, conv.weight.grad.clone()))
    scale = outs[0].abs().max()
    assert (outs[1] - outs[0]).abs().max() <= 1e-4 * scale
    for a, b in zip(grads[0], grads[1], strict=True):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@needs_spconv_gpu
def test_spconv_strided_and_transposed_equal_the_reference():
    torch.manual_seed(0)
    down, up = StridedConv3d(8, 16).cuda(), TransposedConv3d(16, 8).cuda()
    sites = random_sites(4000, 12, seed=2, device="cuda")
    feats = torch.randn(len(sites), 8, device="cuda")
    res = []
    for backend in ("torch", "spconv"):
        down.backend = up.backend = backend
        f = feats.clone().requires_grad_(True)
        down.weight.grad = up.weight.grad = None
        x = SparseTensor.from_coords(sites, f)
        coarse = down(x)
        y = up(coarse, x).feats
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").reshape(y.shape)).sum().backward()
        res.append(
            (coarse.feats.detach(), y.detach(), f.grad, down.weight.grad.clone(), up.weight.grad.clone())
        )
    for a, b in zip(res[0], res[1], strict=True):
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@needs_spconv_gpu
def test_our_layout_equals_spconvs_own_modules():
    """Spconv's own modules with our weights converted to KRSC give our layers' results.

    They generate their own pairs, so offset order and the inverse convolution's convention are the
    library's, not ours.
    """
    import spconv_triton.pytorch as sp

    torch.manual_seed(0)
    sites = random_sites(3000, 10, seed=4, device="cuda")
    feats = torch.randn(len(sites), 8, device="cuda")
    x = SparseTensor.from_coords(sites, feats)
    shift = sites[:, 1:].min(0).values
    shift = torch.div(shift, 2, rounding_mode="floor") * 2  # keep the stride-2 grid aligned
    ind = torch.cat([sites[:, :1], sites[:, 1:] - shift], 1).int()
    shape = (sites[:, 1:] - shift).max(0).values + 2
    st = sp.SparseConvTensor(feats, ind, shape.tolist(), 2)

    ours = SubmanifoldConv3d(8, 12, 3).cuda()
    theirs = sp.SubMConv3d(8, 12, 3, padding=1, bias=False, indice_key="s").cuda()
    theirs.weight.data = spconv_backend.to_spconv_weight(ours.weight.data, 3).contiguous()
    a, b = ours(x).feats, theirs(st).features  # subm: same rows in, same rows out
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()

    down = StridedConv3d(8, 12).cuda()
    sdown = sp.SparseConv3d(8, 12, 2, stride=2, bias=False, indice_key="d").cuda()
    sdown.weight.data = spconv_backend.to_spconv_weight(down.weight.data, 2).contiguous()
    c_ours = down(x)
    c_theirs = sdown(st)
    # rows differ in order: match them by coordinates
    their_xyz = c_theirs.indices[:, 1:].long() * 2 + shift
    keys = torch.cat([c_theirs.indices[:, :1].long(), their_xyz], 1)
    rows = c_ours.cmap.lookup(pack_coords(keys))
    assert (rows >= 0).all()
    assert (c_ours.feats[rows] - c_theirs.features).abs().max() <= 1e-4 * c_ours.feats.abs().max()

    up = TransposedConv3d(12, 8).cuda()
    sup = sp.SparseInverseConv3d(12, 8, 2, bias=False, indice_key="d").cuda()
    sup.weight.data = spconv_backend.to_spconv_weight(up.weight.data, 2).contiguous()
    y_ours = up(c_ours, x).feats
    y_theirs = sup(c_theirs.replace_feature(c_ours.feats[rows])).features
    assert (y_ours - y_theirs).abs().max() <= 1e-4 * y_ours.abs().max()


@needs_spconv_gpu
def test_whole_unet_forward_and_gradients_agree():
    from reasoning_seg.net.model import LabelFree3DNet, NetConfig
    from reasoning_seg.net.unet import UNetConfig

    torch.manual_seed(0)
    net = LabelFree3DNet(NetConfig(unet=UNetConfig(out_channels=32))).cuda().eval()
    sites = random_sites(20000, 40, seed=5, device="cuda")
    feats = torch.rand(len(sites), 3, device="cuda")
    res = []
    for backend in ("torch", "spconv"):
        assert set_backend(net, backend) == backend
        net.zero_grad(set_to_none=True)
        y = net(SparseTensor.from_coords(sites, feats))
        y.square().mean().backward()
        res.append((y.detach(), net.backbone.stem.weight.grad.clone()))
    for a, b in zip(res[0], res[1], strict=True):
        assert (a - b).abs().max() <= 1e-3 * a.abs().max()


def test_kernel_maps_built_in_chunks_equal_one_batch(monkeypatch):
    """The batched neighbour search gives the same maps whatever the chunk size (1 offset .. all)."""
    from reasoning_seg.net import sparse_conv

    sites = random_sites(700, 7, seed=9)
    ref = SparseTensor.from_coords(sites, torch.zeros(len(sites), 1)).cmap.submanifold_map(3)
    monkeypatch.setattr(sparse_conv, "_MAP_CHUNK", 3 * len(sites) + 1)  # 3 offsets a batch
    small = SparseTensor.from_coords(sites, torch.zeros(len(sites), 1)).cmap.submanifold_map(3)
    assert [k for k, _, _ in ref] == [k for k, _, _ in small] and len(ref) == 26
    for (_, o1, i1), (_, o2, i2) in zip(ref, small, strict=True):
        assert torch.equal(o1, o2) and torch.equal(i1, i2)


def test_limit_autotune_leaves_one_candidate_per_kernel():
    """The escape from spconv-triton's per-shape sweep (minutes per U-Net) cuts every autotuner."""
    pytest.importorskip("spconv_triton")
    import sys

    from triton.runtime.autotuner import Autotuner

    spconv_backend.limit_autotune(1)
    tuners = [
        obj
        for name, module in list(sys.modules.items())
        if name.startswith("spconv_triton")
        for obj in vars(module).values()
        if isinstance(obj, Autotuner)
    ]
    assert len(tuners) >= 5  # gather-GEMM, weight gradient, pair kernels, pooling
    assert all(len(t.configs) == 1 for t in tuners)
