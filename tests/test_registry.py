"""Backends by name: registered and lazy entries, and the errors a configuration mistake gets."""

from __future__ import annotations

import pytest

from reasoning_seg.backends import BLOCK_GRIDS, FUSION_METHODS, SEGMENTERS
from reasoning_seg.config import FusionConfig
from reasoning_seg.query.fusion import METHODS, fuse_token_attention
from reasoning_seg.registry import Registry


def test_registered_and_lazy_entries() -> None:
    reg = Registry("widget")

    @reg.register("plain")
    def plain() -> str:
        return "plain"

    reg.register_lazy("dumps", "json:dumps")
    assert reg.names() == ["plain", "dumps"] and "dumps" in reg and "other" not in reg
    assert reg.get("plain") is plain
    import json

    assert reg.get("dumps") is json.dumps
    with pytest.raises(ValueError, match=r"unknown widget 'other' \(one of plain, dumps\)"):
        reg.get("other")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register_lazy("plain", "json:loads")
    with pytest.raises(ValueError, match="module:attribute"):
        reg.register_lazy("bad", "json.loads")
    reg.register_lazy("missing", "reasoning_seg_no_such_module:thing")
    with pytest.raises(ValueError, match="widget 'missing' cannot be loaded here"):
        reg.get("missing")


def test_the_shipped_backends_resolve_to_their_implementations() -> None:
    assert set(FUSION_METHODS.names()) == set(METHODS)
    assert FUSION_METHODS.get("token_attention") is fuse_token_attention
    assert FusionConfig().method in FUSION_METHODS
    assert SEGMENTERS.names() == ["simulated", "lisa"]
    assert BLOCK_GRIDS.names() == ["open3d", "torch", "triton"]
    from reasoning_seg.sim.simulated_segmenter import from_config

    assert SEGMENTERS.get("simulated") is from_config
