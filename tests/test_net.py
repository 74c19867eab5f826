"""The label-free 3D network (issue 6, first slice): sparse-conv backend, U-Net, heads, losses.

The key check is that every sparse layer equals its dense PyTorch counterpart: the sparse features
are written into a dense grid (zero off the occupied sites), the dense ``Conv3d`` /
``ConvTranspose3d`` is applied, and the result is read back at the occupied sites, for the forward
pass and for the gradients w.r.t. input features and weights, on random sites of 2 scenes.
Loss tests use numbers worked out by hand in the test (log/sigmoid of chosen values), never the
code under test.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from reasoning_seg.net.losses import (
    LabelFreeLoss,
    PointViewPairs,
    alignment_loss,
    spatial_consistency_loss,
)
from reasoning_seg.net.sparse_conv import (
    COORD_LIMIT,
    CoordinateMap,
    SparseBatchNorm,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    pack_coords,
    sparse_cat,
    unpack_keys,
)
from reasoning_seg.net.unet import QueryHead, SparseUNet, SpatialProjection, UNetConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run this module single-threaded, then restore the thread count.

    The tensors here are small (hundreds of sites): an OpenMP parallel region saves nothing, and on
    a loaded 2-core CI runner each one waits a scheduler slice for its second thread (measured: a
    16-channel matmul at 6 ms instead of 20 us, the overfit test 100x slower).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _no_tf32() -> Iterator[None]:
    """Exact float32 on CUDA for the dense references.

    cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere and newer, which puts the dense
    reference off by ~1e-3 (seen on an H100) and would fail the fp32 tolerance.
    """
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


TINY = UNetConfig(
    in_channels=3, out_channels=16, init_dim=8, planes=(8, 16, 16, 16, 16, 16, 8, 8), stem_kernel=3
)


# ----------------------------------------------------------------------------- helpers


def random_sites(grid: int, density: float, seed: int, batch: int = 2) -> torch.Tensor:
    """(N, 4) unique random sites in [0, grid)^3 for each of ``batch`` scenes, shuffled rows."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.stack(torch.meshgrid(*[torch.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rows = []
    for b in range(batch):
        keep = torch.rand(len(cells), generator=g) < density
        rows.append(torch.cat([torch.full((int(keep.sum()), 1), b), cells[keep]], 1))
    coords = torch.cat(rows)
    return coords[torch.randperm(len(coords), generator=g)]


def densify(
    coords: torch.Tensor, feats: torch.Tensor, grid: int, batch: int = 2, stride: int = 1
) -> torch.Tensor:
    """(B, C, G, G, G) grid, zero off the sites (differentiable in ``feats``)."""
    dense = feats.new_zeros((batch, grid, grid, grid, feats.shape[1]))
    c = coords.to(feats.device)
    dense[c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride] = feats
    return dense.permute(0, 4, 1, 2, 3)


def read(dense: torch.Tensor, coords: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Dense (B, C, G, G, G) values at the sites, (N, C)."""
    c = coords.to(dense.device)
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1] // stride, c[:, 2] // stride, c[:, 3] // stride]


def conv_weight_to_sparse(w: torch.Tensor) -> torch.Tensor:
    """Dense Conv3d weight (C_out, C_in, k, k, k) -> sparse (k^3, C_in, C_out), x-major offsets."""
    return w.permute(2, 3, 4, 1, 0).reshape(-1, w.shape[1], w.shape[0])


def tconv_weight_to_sparse(w: torch.Tensor) -> torch.Tensor:
    """Dense ConvTranspose3d weight (C_in, C_out, 2, 2, 2) -> sparse (8, C_in, C_out)."""
    return w.permute(2, 3, 4, 0, 1).reshape(8, w.shape[0], w.shape[1])


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    torch.testing.assert_close(a, b, **TOL[dtype])


# ----------------------------------------------------------------------------- layers vs dense


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kernel", [3, 5])
def test_submanifold_conv_equals_dense_conv3d(device: str, dtype: torch.dtype, kernel: int) -> None:
    grid, cin, cout = 9, 4, 5
    coords = random_sites(grid, 0.3, seed=kernel)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(len(coords), cin, generator=gen, dtype=dtype).to(device)
    w_dense = torch.randn(cout, cin, kernel, kernel, kernel, generator=gen, dtype=dtype).to(device)
    bias = torch.randn(cout, generator=gen, dtype=dtype).to(device)
    upstream = torch.randn(len(coords), cout, generator=gen, dtype=dtype).to(device)

    conv = SubmanifoldConv3d(cin, cout, kernel, bias=True).to(device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(conv_weight_to_sparse(w_dense))
        conv.bias.copy_(bias)
    f_s = leaf(feats)
    out_s = conv(SparseTensor.from_coords(coords, f_s)).feats
    (out_s * upstream).sum().backward()

    f_d, w_d, b_d = leaf(feats), leaf(w_dense), leaf(bias)
    out_d = read(F.conv3d(densify(coords, f_d, grid), w_d, b_d, padding=kernel // 2), coords)
    (out_d * upstream).sum().backward()

    close(out_s, out_d, dtype)
    close(f_s.grad, f_d.grad, dtype)
    close(conv.weight.grad, conv_weight_to_sparse(w_d.grad), dtype)
    close(conv.bias.grad, b_d.grad, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strided_conv_equals_dense_conv3d(device: str, dtype: torch.dtype) -> None:
    grid, cin, cout = 10, 3, 6
    coords = random_sites(grid, 0.2, seed=3)
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(len(coords), cin, generator=gen, dtype=dtype).to(device)
    w_dense = torch.randn(cout, cin, 2, 2, 2, generator=gen, dtype=dtype).to(device)

    conv = StridedConv3d(cin, cout).to(device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(conv_weight_to_sparse(w_dense))
    f_s = leaf(feats)
    out = conv(SparseTensor.from_coords(coords, f_s))
    # Output sites: exactly the distinct floor(c / 2) cells, at stride 2 in input units.
    assert out.stride == 2
    expect = torch.unique(torch.cat([coords[:, :1], coords[:, 1:] // 2 * 2], 1), dim=0)
    assert torch.equal(torch.unique(out.coords.cpu(), dim=0), expect)
    upstream = torch.randn(len(out.coords), cout, generator=gen, dtype=dtype).to(device)
    (out.feats * upstream).sum().backward()

    f_d, w_d = leaf(feats), leaf(w_dense)
    out_d = read(F.conv3d(densify(coords, f_d, grid), w_d, stride=2), out.coords.cpu(), stride=2)
    (out_d * upstream).sum().backward()

    close(out.feats, out_d, dtype)
    close(f_s.grad, f_d.grad, dtype)
    close(conv.weight.grad, conv_weight_to_sparse(w_d.grad), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("coarse_from", ["downsample", "independent"])
def test_transposed_conv_equals_dense_convtranspose3d(
    device: str, dtype: torch.dtype, coarse_from: str
) -> None:
    grid, cin, cout = 10, 5, 3
    fine_coords = random_sites(grid, 0.2, seed=4)
    fine = CoordinateMap(fine_coords.to(device))
    if coarse_from == "downsample":  # the U-Net's case: the encoder's own coarse map
        coarse = fine.downsample().coarse
    else:  # same coarse sites built separately, in another row order: found by key look-up
        cc = fine.downsample().coarse.coords.cpu()
        coarse = CoordinateMap(
            cc[torch.randperm(len(cc), generator=torch.Generator().manual_seed(0))].to(device), 2
        )
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(len(coarse), cin, generator=gen, dtype=dtype).to(device)
    w_dense = torch.randn(cin, cout, 2, 2, 2, generator=gen, dtype=dtype).to(device)
    upstream = torch.randn(len(fine), cout, generator=gen, dtype=dtype).to(device)

    conv = TransposedConv3d(cin, cout).to(device=device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(tconv_weight_to_sparse(w_dense))
    f_s = leaf(feats)
    out = conv(SparseTensor(f_s, coarse), fine)
    assert out.cmap is fine
    (out.feats * upstream).sum().backward()

    f_d, w_d = leaf(feats), leaf(w_dense)
    coarse_dense = densify(coarse.coords.cpu(), f_d, grid // 2, stride=2)
    out_d = read(F.conv_transpose3d(coarse_dense, w_d, stride=2), fine_coords)
    (out_d * upstream).sum().backward()

    close(out.feats, out_d, dtype)
    close(f_s.grad, f_d.grad, dtype)
    close(conv.weight.grad, tconv_weight_to_sparse(w_d.grad), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_down_submanifold_up_chain_equals_dense(device: str) -> None:
    """Strided conv -> submanifold conv at stride 2 -> transposed conv, against the dense chain.

    Checks the neighbour search at a coarser level (neighbours 2 input voxels apart) and that the
    transposed convolution lands on the encoder's sites.
    """
    dtype, grid, c0, c1, c2, c3 = torch.float64, 12, 3, 4, 5, 2
    coords = random_sites(grid, 0.25, seed=6)
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(len(coords), c0, generator=gen, dtype=dtype).to(device)
    wd = torch.randn(c1, c0, 2, 2, 2, generator=gen, dtype=dtype).to(device)
    ws = torch.randn(c2, c1, 3, 3, 3, generator=gen, dtype=dtype).to(device)
    wu = torch.randn(c2, c3, 2, 2, 2, generator=gen, dtype=dtype).to(device)
    upstream = torch.randn(len(coords), c3, generator=gen, dtype=dtype).to(device)

    down, sub, up = StridedConv3d(c0, c1), SubmanifoldConv3d(c1, c2), TransposedConv3d(c2, c3)
    for m, w in (
        (down, conv_weight_to_sparse(wd)),
        (sub, conv_weight_to_sparse(ws)),
        (up, tconv_weight_to_sparse(wu)),
    ):
        m.to(device=device, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(w)
    f_s = leaf(feats)
    x = SparseTensor.from_coords(coords, f_s)
    mid = sub(down(x))
    assert mid.stride == 2
    out = up(mid, x)
    (out.feats * upstream).sum().backward()

    f_d, wd_d, ws_d, wu_d = leaf(feats), leaf(wd), leaf(ws), leaf(wu)
    occupied = densify(
        mid.coords.cpu(), torch.ones(len(mid.coords), 1, dtype=dtype, device=device), grid // 2, stride=2
    )
    d1 = F.conv3d(densify(coords, f_d, grid), wd_d, stride=2) * occupied
    d2 = F.conv3d(d1, ws_d, padding=1) * occupied
    out_d = read(F.conv_transpose3d(d2, wu_d, stride=2), coords)
    (out_d * upstream).sum().backward()

    close(out.feats, out_d, dtype)
    close(f_s.grad, f_d.grad, dtype)
    close(down.weight.grad, conv_weight_to_sparse(wd_d.grad), dtype)
    close(sub.weight.grad, conv_weight_to_sparse(ws_d.grad), dtype)
    close(up.weight.grad, tconv_weight_to_sparse(wu_d.grad), dtype)


def test_batchnorm_uses_occupied_sites_only() -> None:
    feats = torch.tensor([[1.0], [3.0], [5.0], [7.0]])
    coords = torch.tensor([[0, 0, 0, 0], [0, 5, 0, 0], [1, 0, 0, 0], [1, 0, 9, 0]])
    out = SparseBatchNorm(1, momentum=0.05)(SparseTensor.from_coords(coords, feats)).feats
    # mean 4, biased variance (9 + 1 + 1 + 9) / 4 = 5
    torch.testing.assert_close(out[:, 0], (feats[:, 0] - 4.0) / math.sqrt(5.0 + 1e-5))


# ----------------------------------------------------------------------------- coordinates


def test_pack_unpack_round_trip_and_linear_neighbour_keys() -> None:
    lim = COORD_LIMIT
    coords = torch.tensor([[0, 0, 0, 0], [4095, -lim, lim, -1], [7, lim, -lim, 3], [1, -5, 6, -7]])
    assert torch.equal(unpack_keys(pack_coords(coords)), coords)
    # key(c + d) = key(c) + key(d) at the extremes: offsets never carry into a neighbouring field.
    for d in ([1, 0, 0], [0, -1, 0], [0, 0, 1], [-16, 16, -16]):
        shifted = coords.clone()
        shifted[:, 1:] += torch.tensor(d)
        delta = pack_coords(torch.tensor([[0, *d]])) - pack_coords(torch.zeros(1, 4, dtype=torch.long))
        assert torch.equal(pack_coords(coords) + delta, pack_coords(shifted))


def test_coordinate_map_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        CoordinateMap(torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="beyond"):
        CoordinateMap(torch.tensor([[0, COORD_LIMIT + 1, 0, 0]]))
    with pytest.raises(ValueError, match="batch"):
        CoordinateMap(torch.tensor([[-1, 0, 0, 0]]))
    with pytest.raises(ValueError, match="multiples"):
        CoordinateMap(torch.tensor([[0, 2, 3, 4]]), stride=2)
    with pytest.raises(ValueError, match="integer"):
        CoordinateMap(torch.zeros(2, 4))
    sites = random_sites(6, 0.3, seed=8)
    x = SparseTensor.from_coords(sites, torch.randn(len(sites), 2))
    y = SparseTensor.from_coords(x.coords.clone(), x.feats)
    with pytest.raises(ValueError, match="same CoordinateMap"):
        sparse_cat(x, y)
    with pytest.raises(ValueError, match="stride"):
        TransposedConv3d(2, 2)(x, x)


def test_lookup_finds_sites_and_reports_missing() -> None:
    coords = random_sites(7, 0.3, seed=9)
    cmap = CoordinateMap(coords)
    rows = cmap.lookup(pack_coords(coords))
    assert torch.equal(rows, torch.arange(len(coords)))
    absent = torch.tensor([[0, 100, 0, 0], [2, 0, 0, 0], [1, -1, 0, 0]])
    assert torch.equal(cmap.lookup(pack_coords(absent)), torch.full((3,), -1))


# ----------------------------------------------------------------------------- U-Net


def two_scenes(seed: int = 0, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random scenes of surface-like voxels spanning several coarse cells, with colours."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(2):
        xyz = torch.randint(0, 40, (n, 3), generator=g)
        xyz[: n // 2, 2] = 0  # a floor, so neighbourhoods are not all empty
        rows.append(torch.cat([torch.full((n, 1), b), xyz], 1))
    coords = torch.unique(torch.cat(rows), dim=0)
    coords = coords[torch.randperm(len(coords), generator=g)]
    return coords, torch.rand(len(coords), 3, generator=g)


def test_default_config_is_minkowskinet14_of_the_paper() -> None:
    cfg = UNetConfig()
    assert cfg.out_channels == 512  # A.3: 512-d features per voxel
    assert cfg.bn_momentum == 0.05  # A.3: BatchNorm momentum 0.05
    assert cfg.layers == (1,) * 8 and cfg.planes == (32, 64, 128, 256, 256, 128, 96, 96)
    net = SparseUNet(cfg)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns and all(m.momentum == 0.05 for m in bns)


def test_unet_forward_shapes_on_two_scenes() -> None:
    coords, feats = two_scenes()
    torch.manual_seed(0)
    net = SparseUNet(TINY)
    out = net(SparseTensor.from_coords(coords, feats))
    assert out.feats.shape == (len(coords), 16)
    assert torch.equal(out.coords, coords)  # row i of the output belongs to input site i
    assert torch.isfinite(out.feats).all()
    out.feats.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="input channels"):
        net(SparseTensor.from_coords(coords, torch.rand(len(coords), 4)))


def test_unet_runs_under_autocast() -> None:
    """Mixed precision (bfloat16 matmuls on CPU, float16 on CUDA) must not break the scatter-adds."""
    coords, feats = two_scenes(4)
    torch.manual_seed(4)
    net = SparseUNet(TINY)
    with torch.no_grad():
        ref = net(SparseTensor.from_coords(coords, feats)).feats
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(SparseTensor.from_coords(coords, feats)).feats
    assert torch.isfinite(low.float()).all()
    # bfloat16 keeps ~3 significant digits: features agree to a few percent of their spread.
    assert (low.float() - ref).abs().mean() < 0.05 * ref.std()


def test_from_batch_stacks_scenes_in_order() -> None:
    a, b = torch.tensor([[0, 0, 0], [1, 2, 3]]), torch.tensor([[0, 0, 0]])
    x = SparseTensor.from_batch([a, b], [torch.ones(2, 3), torch.zeros(1, 3)])
    assert x.coords.tolist() == [[0, 0, 0, 0], [0, 1, 2, 3], [1, 0, 0, 0]]
    assert x.cmap.batch_size == 2


def test_unet_is_permutation_equivariant() -> None:
    coords, feats = two_scenes(1)
    torch.manual_seed(1)
    net = SparseUNet(TINY)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = net(SparseTensor.from_coords(coords, feats)).feats
        out_perm = net(SparseTensor.from_coords(coords[perm], feats[perm])).feats
    torch.testing.assert_close(out_perm, out[perm], rtol=1e-5, atol=1e-5)


def test_unet_is_invariant_to_translation_by_the_coarsest_stride_only() -> None:
    coords, feats = two_scenes(2)
    torch.manual_seed(2)
    net = SparseUNet(TINY)
    stride = TINY.coarsest_stride

    def run(shift: list[int]) -> torch.Tensor:
        moved = coords.clone()
        moved[moved[:, 0] == 1, 1:] += torch.tensor(shift)  # move scene 1 only, to negative coords too
        with torch.no_grad():
            return net(SparseTensor.from_coords(moved, feats)).feats

    base = run([0, 0, 0])
    torch.testing.assert_close(run([stride, -3 * stride, 5 * stride]), base, rtol=1e-5, atol=1e-5)
    # Half the coarsest stride regroups the coarse cells: features must change (the test can fail).
    assert not torch.allclose(run([stride // 2, 0, 0]), base, rtol=1e-3, atol=1e-3)


def test_save_load_state_dict_gives_same_outputs() -> None:
    coords, feats = two_scenes(3)
    torch.manual_seed(3)
    net, head = SparseUNet(TINY), QueryHead(32, 16)
    x = SparseTensor.from_coords(coords, feats)
    net(x)  # one training-mode pass so the BatchNorm running statistics are not the initial ones
    net.eval()
    emb = torch.randn(32)
    with torch.no_grad():
        ref = head.probabilities(net(x).feats, emb)
    buf = io.BytesIO()
    torch.save({"net": net.state_dict(), "head": head.state_dict(), "config": TINY}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    torch.manual_seed(99)
    net2, head2 = SparseUNet(ckpt["config"]), QueryHead(32, 16)
    net2.load_state_dict(ckpt["net"])
    head2.load_state_dict(ckpt["head"])
    net2.eval()
    with torch.no_grad():
        again = head2.probabilities(net2(SparseTensor.from_coords(coords, feats)).feats, emb)
    assert torch.equal(again, ref)


# ----------------------------------------------------------------------------- heads


def test_query_head_logits_cosine_and_probability_by_hand() -> None:
    head = QueryHead(embed_dim=2, feature_dim=2, cosine_scale=10.0)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # h = (1, 1) -> q = (2, 1)
    feats = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, -1.0]])
    h = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(head.logits(feats, h), torch.tensor([2.0, 3.0, -5.0]))
    cos = torch.tensor([2 / math.sqrt(5), 1 / math.sqrt(5), -1.0])
    torch.testing.assert_close(head.cosine(feats, h), cos)
    torch.testing.assert_close(head.probabilities(feats, h), 1 / (1 + torch.exp(-10 * cos)))
    assert head.predict(feats, h).tolist() == [True, True, False]
    assert head.predict(feats, h, threshold=0.999).tolist() == [True, False, False]  # sigmoid(10*0.447)=0.989
    # One embedding per scene: scene 1's query is h' = (0, -1) -> q' = (0, -1).
    both = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(
        head.logits(feats, both, torch.tensor([0, 1, 1])), torch.tensor([2.0, -3.0, 1.0])
    )


def test_spatial_projection_maps_into_image_space() -> None:
    proj = SpatialProjection(feature_dim=512, image_dim=256)
    assert proj(torch.randn(5, 512)).shape == (5, 256)
    ident = SpatialProjection(4, 4, learned=False)
    x = torch.randn(3, 4)
    assert torch.equal(ident(x), x)
    with pytest.raises(ValueError):
        SpatialProjection(8, 4, learned=False)


# ----------------------------------------------------------------------------- losses (hand cases)


def test_alignment_loss_eq1_by_hand() -> None:
    logits = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5, 0.75
    point = torch.tensor([0, 1, 1])
    target_logit = torch.tensor([math.inf, -math.log(3.0), 0.0])  # sigmoid: 1, 0.25, 0.5
    bce = [
        math.log(2.0),  # -log 0.5
        -(0.25 * math.log(0.75) + 0.75 * math.log(0.25)),
        -(0.5 * math.log(0.75) + 0.5 * math.log(0.25)),
    ]
    torch.testing.assert_close(alignment_loss(logits, point, target_logit), torch.tensor(sum(bce) / 3))
    w = torch.tensor([2.0, 1.0, 0.0])
    torch.testing.assert_close(
        alignment_loss(logits, point, target_logit, w), torch.tensor((2 * bce[0] + bce[1]) / 3.0)
    )
    probs = torch.tensor([1.0, 0.25, 0.5])
    torch.testing.assert_close(
        alignment_loss(logits, point, probs, target_is_logit=False), torch.tensor(sum(bce) / 3)
    )


def test_spatial_consistency_loss_eq2_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    point = torch.tensor([0, 1, 0, 2])
    img = torch.tensor([[0.0, 5.0], [2.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    # 1 - cos per pair: 1 (orthogonal), 0 (parallel), 2 (opposite), 1 - 1/sqrt(2)
    per_pair = [1.0, 0.0, 2.0, 1.0 - 1.0 / math.sqrt(2.0)]
    torch.testing.assert_close(spatial_consistency_loss(feats, point, img), torch.tensor(sum(per_pair) / 4))
    in_s = torch.tensor([True, True, False, False])
    torch.testing.assert_close(spatial_consistency_loss(feats, point, img, in_s), torch.tensor(0.5))


def test_label_free_loss_eq3_and_ablation_switches() -> None:
    logits = torch.tensor([0.0, math.log(3.0)], requires_grad=True)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    pairs = PointViewPairs(
        point=torch.tensor([0, 1]),
        mask_logit=torch.tensor([2.0, -2.0]),  # pair 0 inside the 2D mask (in S), pair 1 outside
        image_feat=torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
    )
    s2 = 1 / (1 + math.exp(-2.0))
    align = (
        -(s2 * math.log(0.5) + (1 - s2) * math.log(0.5)) - ((1 - s2) * math.log(0.75) + s2 * math.log(0.25))
    ) / 2
    spatial = 1.0  # only pair 0 is in S: cos((1, 0), (0, 1)) = 0
    terms = LabelFreeLoss(lambda_spatial=0.5)(logits, feats, pairs)
    torch.testing.assert_close(terms.align, torch.tensor(align))
    torch.testing.assert_close(terms.spatial, torch.tensor(spatial))
    torch.testing.assert_close(terms.total, torch.tensor(align + 0.5 * spatial))
    terms.total.backward()
    assert logits.grad is not None and feats.grad is not None
    torch.testing.assert_close(
        LabelFreeLoss(use_spatial=False)(logits, None, pairs).total, torch.tensor(align)
    )
    no_align = LabelFreeLoss(use_alignment=False, lambda_spatial=2.0)(logits, feats, pairs)
    torch.testing.assert_close(no_align.total, torch.tensor(2.0))
    with pytest.raises(ValueError):
        LabelFreeLoss(use_alignment=False, use_spatial=False)


def test_losses_with_no_pairs_are_zero_and_differentiable() -> None:
    logits = torch.zeros(3, requires_grad=True)
    feats = torch.ones(3, 2, requires_grad=True)
    empty = PointViewPairs(torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, 2))
    terms = LabelFreeLoss()(logits, feats, empty)
    assert float(terms.total.detach()) == 0.0
    terms.total.backward()
    assert torch.equal(logits.grad, torch.zeros(3))


# ----------------------------------------------------------------------------- overfit


def box_voxels(lo: tuple[int, int, int], hi: tuple[int, int, int], hollow: bool) -> torch.Tensor:
    g = torch.stack(
        torch.meshgrid(*[torch.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij"), -1
    )
    g = g.reshape(-1, 3)
    if not hollow:
        return g
    return g[((g == torch.tensor(lo)) | (g == torch.tensor(hi) - 1)).any(1)]


def synthetic_room() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SIMULATED scene: floor, two walls, a hollow 4^3 box (target) and a flat box of the same colour.

    The distractor has the target's colour, so the network has to use shape/context, not colour.
    """
    gen = torch.Generator().manual_seed(0)
    parts = [
        (box_voxels((0, 0, 0), (24, 24, 1), False), (0.5, 0.5, 0.5), False),
        (box_voxels((0, 0, 1), (1, 24, 10), False), (0.8, 0.8, 0.75), False),
        (box_voxels((1, 0, 1), (24, 1, 10), False), (0.8, 0.8, 0.75), False),
        (box_voxels((14, 4, 1), (18, 8, 5), True), (0.7, 0.2, 0.2), True),
        (box_voxels((4, 14, 1), (10, 20, 3), True), (0.7, 0.2, 0.2), False),
    ]
    coords = torch.cat([p for p, _, _ in parts])
    colour = torch.cat([torch.tensor(c).expand(len(p), 3) for p, c, _ in parts])
    label = torch.cat([torch.full((len(p),), t) for p, _, t in parts])
    assert len(torch.unique(coords, dim=0)) == len(coords)
    return coords, colour + 0.05 * torch.randn(len(coords), 3, generator=gen), label


def test_tiny_unet_and_head_overfit_one_scene() -> None:
    """Adam (lr 1e-2; the paper's SGD settings are for full training) reaches IoU > 0.9 fast.

    Supervision is Eq. 1 with hard 0/1 targets on every voxel; IoU is measured in eval mode
    (BatchNorm running statistics, momentum 0.05 as in A.3) with the §3.3 cosine rule.
    """
    coords, colour, label = synthetic_room()
    torch.manual_seed(0)
    net, head = SparseUNet(TINY), QueryHead(32, TINY.out_channels)
    emb = torch.randn(32)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)
    x = SparseTensor.from_batch([coords], [colour])
    every = torch.arange(len(coords))
    start, iou, steps = time.perf_counter(), 0.0, 0
    while time.perf_counter() - start < 30.0 and steps < 300:
        net.train()
        loss = alignment_loss(head.logits(net(x).feats, emb), every, label.float(), target_is_logit=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 10 == 0:
            net.eval()
            with torch.no_grad():
                pred = head.predict(net(x).feats, emb)
            iou = float((pred & label).sum() / (pred | label).sum())
            if iou > 0.9:
                break
    assert iou > 0.9, f"IoU {iou:.3f} after {steps} steps, {time.perf_counter() - start:.1f} s"
