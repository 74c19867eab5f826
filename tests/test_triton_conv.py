"""net.backend: triton — the fused gather-GEMM convolutions against the pure-PyTorch reference.

On a machine without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets
``TRITON_INTERPRET=1``), so CI checks the same kernel source that is compiled on CUDA; on the GPU
machine the same file runs compiled:

    python -m pytest -q tests/test_triton_conv.py      # on the GPU machine

Every layer type is compared with the torch path (forward, input and weight gradients) on sites with
negative coordinates, two batches, channel counts that are not multiples of the tiles, kernel sizes 3
and 5 and a coarse level (stride 4); the neighbour tables are checked site by site.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from reasoning_seg.net import triton_conv  # noqa: E402
from reasoning_seg.net.sparse_conv import (  # noqa: E402
    CoordinateMap,
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    kernel_offsets,
    pack_coords,
    resolve_backend,
    set_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_conv.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET unset: the kernel cannot run here", allow_module_level=True)


def random_sites(n: int, extent: int, seed: int, stride: int = 1) -> torch.Tensor:
    """(n', 4) unique sites in batches 0 and 1, coordinates in [-extent, extent) times ``stride``."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(-extent, extent, (n, 3), generator=g) * stride
    b = torch.randint(0, 2, (n, 1), generator=g)
    return torch.unique(torch.cat([b, xyz], 1), dim=0).to(DEVICE)


def run_both(layer_fn, sites: torch.Tensor, c_in: int, stride: int = 1) -> list[tuple[torch.Tensor, ...]]:
    """Outputs and gradients of ``layer_fn(x)`` with the torch path and with the triton backend."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(len(sites), c_in, generator=g).to(DEVICE)
    results = []
    for backend in ("torch", "triton"):
        f = feats.clone().requires_grad_(True)
        out, params = layer_fn(SparseTensor.from_coords(sites, f, stride), backend)
        w = torch.linspace(-1, 1, out.numel(), device=DEVICE).reshape(out.shape)
        (out * w).sum().backward()
        results.append((out.detach(), f.grad, *[p.grad.clone() for p in params]))
        for p in params:
            p.grad = None
    return results


def assert_close(results: list[tuple[torch.Tensor, ...]], rel: float = 1e-5) -> None:
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= rel * a.abs().max(), float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride"), [(3, 8, 5, 1), (16, 40, 3, 1), (40, 20, 3, 4)]
)
def test_submanifold_equals_the_reference(c_in, c_out, kernel, stride):
    torch.manual_seed(0)
    conv = SubmanifoldConv3d(c_in, c_out, kernel).to(DEVICE)

    def layer(x, backend):
        conv.backend = backend
        return conv(x).feats, [conv.weight]

    assert_close(run_both(layer, random_sites(300, 5, seed=1, stride=stride), c_in, stride))


def test_strided_and_transposed_equal_the_reference():
    torch.manual_seed(0)
    down, up = StridedConv3d(16, 24).to(DEVICE), TransposedConv3d(24, 16).to(DEVICE)

    def layer(x, backend):
        down.backend = up.backend = backend
        coarse = down(x)
        y = up(coarse, x).feats
        return torch.cat([y.flatten(), coarse.feats.flatten()]), [down.weight, up.weight]

    assert_close(run_both(layer, random_sites(300, 5, seed=2), 16))


def test_whole_unet_agrees_with_the_reference():
    from reasoning_seg.net.model import LabelFree3DNet, NetConfig
    from reasoning_seg.net.unet import UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(out_channels=16, init_dim=8, planes=(8, 16, 16, 16, 16, 16, 8, 8), stem_kernel=3)
    net = LabelFree3DNet(NetConfig(unet=cfg)).to(DEVICE).eval()
    sites = random_sites(250, 6, seed=5)
    feats = torch.rand(len(sites), 3, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    res = []
    for backend in ("torch", "triton"):
        assert set_backend(net, backend) == backend
        net.zero_grad(set_to_none=True)
        y = net(SparseTensor.from_coords(sites, feats))
        y.square().mean().backward()
        res.append((y.detach(), net.backbone.stem.weight.grad.clone()))
    assert_close(res, rel=1e-4)


def test_neighbour_table_names_the_site_at_each_offset():
    sites = random_sites(400, 4, seed=7, stride=2)
    cmap = CoordinateMap(sites, stride=2)
    table = triton_conv.submanifold_table(cmap, 3)
    assert table.shape == (len(cmap), 27) and table.dtype == torch.int32
    offsets = torch.tensor(kernel_offsets(3), device=DEVICE) * 2
    present = set(pack_coords(sites).tolist())
    for r in range(0, len(cmap), 7):
        for k, d in enumerate(offsets):
            want = torch.cat([sites[r, :1], sites[r, 1:] + d])
            got = int(table[r, k])
            if int(pack_coords(want[None])[0]) in present:
                assert got >= 0 and torch.equal(sites[got], want)
            else:
                assert got == -1
    assert torch.equal(table[:, 13].long(), torch.arange(len(cmap), device=DEVICE))  # centre = itself


def test_downsample_table_lists_each_fine_site_under_its_parent_once():
    sites = random_sites(300, 5, seed=8)
    cmap = CoordinateMap(sites)
    table = triton_conv.downsample_table(cmap)
    coarse = cmap.downsample().coarse
    rows, ks = torch.nonzero(table >= 0, as_tuple=True)
    fine = table[rows, ks].long()
    assert sorted(fine.tolist()) == list(range(len(cmap)))  # every fine site exactly once
    k3 = torch.stack([ks // 4, (ks // 2) % 2, ks % 2], 1)
    assert torch.equal(sites[fine, 1:], coarse.coords[rows, 1:] + k3)
    assert torch.equal(sites[fine, 0], coarse.coords[rows, 0])


def test_reversed_columns_equal_a_flipped_table():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 20, generator=g).to(DEVICE)
    w = torch.randn(27, 20, 33, generator=g).to(DEVICE)
    table = torch.randint(-1, 50, (70, 27), generator=g, dtype=torch.int32).to(DEVICE)
    a = triton_conv.gather_gemm(x, w, table, 70, reverse=True)
    b = triton_conv.gather_gemm(x, w, table.flip(1), 70)
    ref = sum(
        torch.where(
            (table.flip(1)[:, k] >= 0)[:, None], x[table.flip(1)[:, k].long().clamp(min=0)] @ w[k], 0.0
        )
        for k in range(27)
    )
    assert torch.equal(a, b)
    assert (a - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_empty_input_gives_empty_output():
    conv = SubmanifoldConv3d(4, 8, 3).to(DEVICE)
    conv.backend = "triton"
    x = SparseTensor.from_coords(torch.zeros((0, 4), dtype=torch.int64), torch.zeros(0, 4, device=DEVICE))
    assert conv(x).feats.shape == (0, 8)


def test_backend_resolution_names_triton():
    assert resolve_backend("triton", DEVICE) == "triton"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tensor-core products need a GPU")
def test_bf16_autocast_stays_within_bf16_rounding():
    torch.manual_seed(0)
    conv = SubmanifoldConv3d(32, 64, 3).cuda()
    sites = random_sites(3000, 10, seed=9)
    x = SparseTensor.from_coords(sites, torch.randn(len(sites), 32, device="cuda"))
    conv.backend = "torch"
    ref = conv(x).feats
    conv.backend = "triton"
    with torch.autocast("cuda", torch.bfloat16):
        y = conv(x).feats
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
