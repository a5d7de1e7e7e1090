"""Config dataclasses, presets and --key value overrides."""
from dataclasses import dataclass
from typing import Optional

import pytest

from shared.train import ConfigError, load_config, parse_config, save_config


@dataclass
class Cfg:
    preset: str = "default"
    lr: float = 1e-3
    layers: int = 12
    use_bias: bool = True
    dims: tuple[int, ...] = (4, 4)
    data: Optional[str] = None
    mode: str = "1d"


PRESETS = {"tiny": dict(layers=2, lr=0.01), "paper": dict(layers=24)}


def test_defaults_then_preset_then_overrides():
    cfg = parse_config(Cfg, PRESETS, [])
    assert cfg.layers == 2 and cfg.lr == 0.01 and cfg.preset == "tiny"
    cfg = parse_config(Cfg, PRESETS, ["--preset", "paper", "--lr", "3e-4", "--use_bias", "false",
                                      "--dims", "2,3,5", "--data=/some/where", "--layers", "1e2"])
    assert (cfg.preset, cfg.layers, cfg.lr, cfg.use_bias, cfg.dims, cfg.data) == \
        ("paper", 100, 3e-4, False, (2, 3, 5), "/some/where")
    assert parse_config(Cfg, PRESETS, ["--data", "none"]).data is None
    assert parse_config(Cfg, PRESETS, ["--use-bias", "no"]).use_bias is False
    bare = parse_config(Cfg, PRESETS, ["--use_bias", "--layers", "3"])
    assert bare.use_bias is True and bare.layers == 3
    assert parse_config(Cfg, PRESETS, ["--use_bias"]).use_bias is True


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key --layer; did you mean --layers"):
        parse_config(Cfg, PRESETS, ["--layer", "3"])


@pytest.mark.parametrize("argv,message", [
    (["--layers", "three"], "--layers expects int; got 'three'"),
    (["--lr", "fast"], "--lr expects float"),
    (["--use_bias", "maybe"], "expects a boolean"),
    (["--preset", "huge"], "unknown preset 'huge'; presets: tiny, paper"),
    (["--lr"], "--lr needs a value"),
    (["lr", "3"], "expected --key value"),
])
def test_bad_values_are_named(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(Cfg, PRESETS, argv)


def test_saved_config_round_trips(tmp_path):
    cfg = parse_config(Cfg, PRESETS, ["--dims", "7,9"])
    path = save_config(cfg, tmp_path / "run" / "config.json")
    assert load_config(Cfg, path) == cfg


def test_bare_unknown_flag_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown config key --use_bia; did you mean --use_bias"):
        parse_config(Cfg, PRESETS, ["--use_bia"])


def test_command_line_errors_end_with_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["train", "--layer", "3"])
    with pytest.raises(SystemExit) as info:
        parse_config(Cfg, PRESETS)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key --layer") and "Traceback" not in err
