"""Appearance of the simulated room: deterministic surface texture and Kinect-like depth noise."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # typing only: no import cycle at run time
    pass


# ---------------------------------------------------------------------------------------------
# Appearance: deterministic texture and a Kinect-like depth noise model
# ---------------------------------------------------------------------------------------------

_LIGHT_DIR = np.array([0.35, -0.25, 1.0]) / np.linalg.norm([0.35, -0.25, 1.0])  # towards the light
_AMBIENT, _DIFFUSE = 0.5, 0.5


_NOISE_N = 1024  # lattice period of the texture tables: 1024 cells >= 10 m, no visible repetition


@lru_cache(maxsize=1)
def _noise_table() -> np.ndarray:
    """Fixed pseudo-random lattice values in [-1, 1) (PCG64 with a constant seed: same on every machine)."""
    table = np.random.default_rng(0x5EED).uniform(-1.0, 1.0, _NOISE_N * _NOISE_N).astype(np.float32)
    table.flags.writeable = False
    return table


def _lattice(iu: np.ndarray, iv: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Table value of integer cell (iu, iv), shifted per ``salt`` so objects get different patterns."""
    mask = np.int32(_NOISE_N - 1)
    return np.take(
        _noise_table(),
        ((iu + salt * np.int32(131)) & mask) * np.int32(_NOISE_N) + ((iv + salt * np.int32(71)) & mask),
    )


def _surface_texture(u: np.ndarray, v: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """Multiplicative brightness factor (about 1 +- 0.08) from face-tangent coordinates (metres).

    Smooth value noise (6 cm cells, smoothstep-bilinear) plus a 1 cm grain. Being a function of
    the surface point, it moves with the surface across views, which gives photometric methods
    something to track; tangent coordinates avoid flicker on faces lying on lattice boundaries.
    """
    cu, cv = u / np.float32(0.06), v / np.float32(0.06)
    fu, fv = np.floor(cu), np.floor(cv)
    iu, iv = fu.astype(np.int32), fv.astype(np.int32)
    au, av = cu - fu, cv - fv
    au, av = au * au * (3 - 2 * au), av * av * (3 - 2 * av)
    coarse = (_lattice(iu, iv, salt) * (1 - au) + _lattice(iu + 1, iv, salt) * au) * (1 - av) + (
        _lattice(iu, iv + 1, salt) * (1 - au) + _lattice(iu + 1, iv + 1, salt) * au
    ) * av
    gu = np.floor(u / np.float32(0.01)).astype(np.int32)
    gv = np.floor(v / np.float32(0.01)).astype(np.int32)
    grain = _lattice(gu, gv, salt + 509)
    return 1.0 + 0.05 * coarse + 0.03 * grain


def apply_depth_noise(
    depth: np.ndarray,
    rng: np.random.Generator,
    incidence_cos: np.ndarray | None = None,
    min_range: float = 0.4,
    max_range: float = 8.0,
    dropout: float = 0.01,
    grazing_cos: float = 0.2,
    edge_jump: float = 0.05,
    edge_dropout: float = 0.5,
) -> np.ndarray:
    """Kinect-like degradation of a perfect z-depth image (metres in, metres out, 0 = no reading).

    Axial noise sigma(z) = 1.2 mm + 1.9 mm * (z - 0.4 m)^2 (the structured-light model of Nguyen,
    Izadi & Lovell, 2012). Missing returns (depth 0) are part of the model, as on a real sensor:
    outside ``[min_range, max_range]``, on surfaces seen at grazing angles (``incidence_cos`` =
    |cos| between ray and normal below ``grazing_cos``), at random (``dropout``), and on the far
    side of depth discontinuities, where the projector's pattern is shadowed by the nearer edge
    (a pixel more than ``edge_jump`` x its depth behind a 4-neighbour loses its reading with
    probability ``edge_dropout``). Lets tests check that fusion tolerates real-sensor artefacts.
    """
    z = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(z) & (z > 0)
    zv = np.where(valid, z, 0.0)
    sigma = 0.0012 + 0.0019 * (zv - 0.4) ** 2
    noisy = zv + rng.standard_normal(z.shape) * sigma
    lost = ~valid | (zv < min_range) | (zv > max_range) | (rng.random(z.shape) < dropout) | (noisy <= 0)
    if incidence_cos is not None:
        lost |= np.asarray(incidence_cos) < grazing_cos
    shadow_draw = rng.random(z.shape)  # always drawn, so the stream does not depend on the image
    if z.ndim == 2 and edge_dropout > 0:
        nearest = np.full(z.shape, np.inf)
        padded = np.pad(np.where(valid, z, np.inf), 1, constant_values=np.inf)
        h, w = z.shape
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            nearest = np.minimum(nearest, padded[dy : dy + h, dx : dx + w])
        lost |= valid & (zv - nearest > edge_jump * zv) & (shadow_draw < edge_dropout)
    noisy[lost] = 0.0
    return noisy.astype(np.float32)
