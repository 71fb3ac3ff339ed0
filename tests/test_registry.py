"""The model registry: every family on both pipelines, rebuild from config, clear errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from kws.models import DEFAULTS, MODEL_FAMILIES, PIPELINES, KWSModel, build_model, model_from_config

HAVE_S4 = importlib.util.find_spec("kws.models.s4") is not None
CHANNELS = {"raw": 1, "mfcc": 20}
LENGTH = {"raw": 400, "mfcc": 98}


def families() -> list:
    """All four families; the S4 ones skip (not fail) until kws/models/s4.py exists."""
    skip = pytest.mark.skipif(not HAVE_S4, reason="kws/models/s4.py not written yet")
    return [pytest.param(f, marks=skip) if f.startswith("s4") else f for f in MODEL_FAMILIES]


def small_overrides(family: str) -> dict:
    """Shrink the model so building and running it is cheap; the presets are tested for size."""
    if family in ("s4", "s4d"):
        return {"d_model": 16, "d_state": 16, "n_layers": 2}
    if family == "tcn":
        return {"d_model": 16, "n_blocks": 3}
    return {"d_model": 16, "n_layers": 2}


def test_every_family_has_defaults_for_every_pipeline():
    assert MODEL_FAMILIES == ("s4", "s4d", "tcn", "lstm")
    assert set(DEFAULTS) == set(MODEL_FAMILIES)
    for family in MODEL_FAMILIES:
        assert set(DEFAULTS[family]) == set(PIPELINES)


@pytest.mark.parametrize("family", families())
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_builds_with_right_shapes(family, pipeline):
    overrides = small_overrides(family)
    model = build_model(family, CHANNELS[pipeline], 12, pipeline=pipeline, **overrides)
    assert isinstance(model, KWSModel) and model.family == family
    assert model.in_channels == CHANNELS[pipeline] and model.n_classes == 12
    x = torch.randn(3, LENGTH[pipeline], CHANNELS[pipeline])
    with torch.no_grad():
        assert model.eval()(x).shape == (3, 12)


@pytest.mark.parametrize("family", families())
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_presets_are_applied(family, pipeline):
    model = build_model(family, CHANNELS[pipeline], 12, pipeline=pipeline)
    for key, value in DEFAULTS[family][pipeline].items():
        assert model.config[key] == value


@pytest.mark.parametrize("family", families())
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_model_from_config_rebuilds_the_same_model(family, pipeline):
    torch.manual_seed(0)
    model = build_model(
        family, CHANNELS[pipeline], 7, pipeline=pipeline, dropout=0.0, **small_overrides(family)
    ).eval()
    cfg = json.loads(json.dumps(model.config))  # checkpoints store it as plain JSON-able values
    assert cfg["family"] == family
    torch.manual_seed(1)  # different initial weights: only the state_dict may make them agree
    clone = model_from_config(cfg).eval()
    assert type(clone) is type(model) and clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, LENGTH[pipeline], CHANNELS[pipeline])
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_overrides_reach_the_model():
    model = build_model("tcn", 20, 5, pipeline="mfcc", d_model=24, kernel_size=5)
    assert model.d_model == 24 and model.kernel_size == 5 and model.n_blocks == 4
    assert build_model("lstm", 1, 5, n_layers=3).n_layers == 3


def test_default_depths_cover_the_clip():
    assert build_model("tcn", 1, 12, pipeline="raw").n_blocks == 12
    assert build_model("tcn", 20, 12, pipeline="mfcc").n_blocks == 5


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("family", ["tcn", "lstm"])
def test_baseline_size_within_30_percent_of_s4(family, pipeline):
    if not HAVE_S4:
        pytest.skip("kws/models/s4.py not written yet")
    size = build_model(family, CHANNELS[pipeline], 12, pipeline=pipeline).n_parameters
    for s4_family in ("s4", "s4d"):
        reference = build_model(s4_family, CHANNELS[pipeline], 12, pipeline=pipeline).n_parameters
        assert 0.7 <= size / reference <= 1.3, f"{family}: {size:,} vs {s4_family}: {reference:,}"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_model("gru", 1, 2), "unknown model 'gru'; choose one of s4, s4d, tcn, lstm"),
        (lambda: build_model("tcn", 1, 2, pipeline="mel"), "unknown pipeline 'mel'; choose one"),
        (lambda: build_model("tcn", 20, 2, pipeline="raw"), "one input channel, got in_channels"),
        (lambda: build_model("tcn", 1, 2, d_modle=8), "unknown tcn argument.*d_modle.*d_model"),
        (lambda: build_model("lstm", 1, 2, kernel_size=3), "unknown lstm.*kernel_size.*n_layers"),
        (lambda: model_from_config({"d_model": 8}), "'family' key"),
        (lambda: model_from_config({"family": "rnn"}), "unknown family 'rnn'; choose one of"),
        (lambda: model_from_config({"family": "lstm", "n_classes": 2}), "lstm needs in_channels"),
        (
            lambda: model_from_config({"family": "tcn", "in_channels": 1, "n_classes": 2, "x": 1}),
            "model config: unknown tcn argument.*x; valid ones are in_channels",
        ),
    ],
)
def test_bad_names_and_keys_fail_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_s4d_with_the_dplr_kernel_is_refused():
    if not HAVE_S4:
        pytest.skip("kws/models/s4.py not written yet")
    with pytest.raises(ValueError, match="not 's4d'"):
        build_model("s4d", 1, 2, kernel="dplr", **small_overrides("s4d"))


def test_importing_the_registry_does_not_import_s4():
    # The baselines must work while (or if) the S4 module is broken or missing.
    code = (
        "import sys, kws.models; kws.models.build_model('tcn', 1, 2); "
        "print('kws.models.s4' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
