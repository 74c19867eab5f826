"""The parameters file and the README's parameter table are what the code declares (one source)."""

from pathlib import Path

from reasoning_seg.ros.params import render_params_markdown, render_params_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_params_yaml_matches_the_declared_parameters():
    assert (ROOT / "config" / "reasoning_seg.yaml").read_text() == render_params_yaml(), (
        "regenerate with: python -m reasoning_seg.ros.params yaml > config/reasoning_seg.yaml"
    )


def test_readme_parameter_table_matches_the_declared_parameters():
    assert render_params_markdown() in (ROOT / "README.md").read_text(), (
        "regenerate the README table with: python -m reasoning_seg.ros.params"
    )
