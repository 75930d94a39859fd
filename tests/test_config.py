"""Trainer configs: _base_, --cfg-options with the seed's semantics, clear errors for bad keys."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conftest import CONFIGS
from razor.config import (ConfigError, apply_options, config_port, format_value, load_config,
                          parse_cfg_options, parse_value)


@pytest.mark.parametrize("text, value", [
    ("1", 1), ("0.5", 0.5), ("1e-3", 0.001), ("True", True), ("false", False), ("None", None),
    ("[1,2]", [1, 2]), ("[1, [2, 3]]", [1, [2, 3]]), ("(1,2)", [1, 2]), ("1,2,3", [1, 2, 3]),
    ("sgd", "sgd"), ("'quoted'", "quoted"), ("[a,b]", ["a", "b"]), ("[]", []),
    ("{a: 1}", {"a": 1}),
])
def test_parse_value_like_the_seed(text, value):
    assert parse_value(text) == value


@pytest.mark.parametrize("value", [1, 0.25, True, None, "sgd", "two words", "1", "True", "[x]",
                                   [1, 2], [[1], [2, 3]], {"type": "cnn", "channels": [8]}, "a,b"])
def test_format_value_round_trips(value):
    assert parse_value(format_value(value)) == value


def test_cfg_options_override_nested_keys_and_lists():
    cfg = load_config(CONFIGS / "digits_kd.yaml")
    out = apply_options(cfg, parse_cfg_options(
        ["optimizer.lr=0.01", "model.hidden=[64,32]", "algorithm.teacher.model.hidden=128,64",
         "dist_params.port=29501"]))
    assert out["optimizer"]["lr"] == 0.01
    assert out["model"]["hidden"] == [64, 32]
    assert out["algorithm"]["teacher"]["model"]["hidden"] == [128, 64]
    assert config_port(out) == 29501
    assert cfg["optimizer"]["lr"] == 0.4, "the loaded config is not changed in place"


def test_base_is_merged_underneath():
    cfg = load_config(CONFIGS / "digits_kd.yaml")
    assert cfg["algorithm"]["type"] == "kd"          # from digits_kd.yaml
    assert cfg["optimizer"]["type"] == "sgd"         # from digits_base.yaml
    assert "_base_" not in cfg


def test_unknown_key_names_the_key_and_suggests():
    cfg = load_config(CONFIGS / "digits_mlp.yaml")
    with pytest.raises(ConfigError) as err:
        apply_options(cfg, {"optimizer.lrr": 0.1})
    msg = str(err.value)
    assert "optimizer.lrr" in msg and "no key 'lrr' at optimizer" in msg
    assert "Did you mean 'optimizer.lr'?" in msg


def test_key_below_a_value_is_an_error():
    cfg = load_config(CONFIGS / "digits_mlp.yaml")
    with pytest.raises(ConfigError, match="optimizer.lr is a float, not a section"):
        apply_options(cfg, {"optimizer.lr.x": 1})


def test_malformed_option():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_cfg_options(["optimizer.lr"])


def test_missing_and_cyclic_configs(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


# -- learning-rate scaling (the seed: new_lr = old_lr * new_ngpus / old_ngpus)

def _scale(world: int, **kw):
    from razor_trainer.train import scaled_lr

    cfg = load_config(CONFIGS / "digits_mlp.yaml")
    args = argparse.Namespace(auto_scale_lr=kw.pop("enable", None), base_gpus=kw.pop("base_gpus", None),
                              base_batch_size=kw.pop("base_batch_size", None))
    for key, value in kw.items():
        cfg["auto_scale_lr"][key] = value
    return scaled_lr(cfg, args, world)


def test_lr_scales_with_the_number_of_gpus():
    lr, note = _scale(2)
    assert lr == pytest.approx(0.4 * 2 / 8)
    assert note.startswith("lr 0.4 -> 0.1 (8 -> 2 GPUs")
    assert _scale(8)[0] == pytest.approx(0.4)
    assert _scale(16)[0] == pytest.approx(0.8)


def test_lr_scaling_bases_and_switch():
    assert _scale(2, base_gpus=4)[0] == pytest.approx(0.2)
    assert _scale(2, base_batch_size=128)[0] == pytest.approx(0.2)
    assert _scale(2, enable=False) == (0.4, None)
    assert _scale(2, enable=False)[0] == 0.4


def test_work_dir_defaults_to_the_config_stem():
    from razor_trainer.train import default_work_dir

    assert default_work_dir("configs/kd/cwd_resnet34_r18.yaml") == Path("work_dirs/cwd_resnet34_r18")
