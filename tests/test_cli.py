"""The command line: help texts and bad input."""

import pytest

from reverie.cli.config import compose
from reverie.cli.main import main


def test_help(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for word in ("algo=", "size=", "env=", "exp=", "train_ratio", "logdir", "device", "1m", "12m"):
        assert word in out


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_unknown_key_fails_with_hydra_message(capsys):
    assert main(["train", "nonsense_key=3"]) == 2
    assert "Could not override 'nonsense_key'" in capsys.readouterr().err


def test_unknown_env_lists_families(capsys):
    assert main(["train", "env=nope/task"]) == 2
    err = capsys.readouterr().err
    assert "dmc/" in err and "gym/" in err and "fake/" in err


def test_unknown_env_name_through_make_lists_families():
    from reverie import envs

    with pytest.raises(ValueError, match="dmc/"):
        envs.make("nope/task")


def test_size_presets_match_official_table():
    official = {
        "1m": (512, 64, 4, 64),
        "12m": (2048, 256, 16, 256),
        "25m": (3072, 384, 24, 384),
        "50m": (4096, 512, 32, 512),
        "100m": (6144, 768, 48, 768),
        "200m": (8192, 1024, 64, 1024),
        "400m": (12288, 1536, 96, 1536),
    }
    for name, (deter, hidden, classes, units) in official.items():
        size = compose([f"size={name}"]).size
        assert (size.deter, size.hidden, size.classes, size.units) == (deter, hidden, classes, units)


def test_every_dmc_task_has_an_env_preset():
    from dm_control import suite

    for domain, task in suite.ALL_TASKS:
        assert compose([f"env=dmc/{domain}_{task}"]).env.name == f"dmc/{domain}_{task}"


def test_exp_ref_sheeprl_xs():
    cfg = compose(["exp=ref_sheeprl_xs"])
    assert (cfg.size.deter, cfg.size.hidden, cfg.algo.rssm.stoch, cfg.size.classes) == (256, 256, 32, 32)
    assert cfg.algo.encoder.layers == 1 and cfg.threads == 1 and cfg.precision == "fp32"
    assert (cfg.batch_size, cfg.batch_length, cfg.algo.imag_horizon) == (16, 64, 15)


def test_missing_dependency_is_a_clear_message(monkeypatch, capsys):
    import sys

    from reverie.cli import main as cli

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    monkeypatch.setitem(cli.COMMANDS, "export", lambda args: __import__("onnxruntime"))
    assert main(["export", "x"]) == 3
    err = capsys.readouterr().err
    assert "'onnxruntime' is not installed" in err and "pip install onnxruntime" in err


def test_unreadable_config_in_logdir_is_refused(tiny_overrides, tmp_path, capsys):
    """A logdir whose config.yaml is corrupt: a clear message, nothing overwritten."""
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "config.yaml").write_text("steps: [unclosed\n")
    overrides = [o for o in tiny_overrides if not o.startswith("logdir=")]
    assert main(["train", "env=fake/vector", "steps=10", f"logdir={logdir}", *overrides]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert (logdir / "config.yaml").read_text() == "steps: [unclosed\n"
    from reverie.agent.loading import load_trained

    (logdir / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="cannot read"):
        load_trained(logdir)


def test_a_config_that_is_a_list_is_refused_by_load_trained(tmp_path):
    """Valid YAML that is no mapping (a list) is an unreadable config: a ValueError, not OmegaConf's AttributeError."""
    import torch

    from reverie.agent.loading import load_trained

    (tmp_path / "config.yaml").write_text("- steps\n- 10\n")
    act = {"dtype": "float32", "shape": [1], "low": -1.0, "high": 1.0, "discrete": False}
    torch.save({"format": 1, "spaces": {"obs": {}, "act": act}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a mapping"):
        load_trained(tmp_path)


def test_a_native_crash_in_a_command_prints_the_python_stack():
    """faulthandler is on for every command: an abort in a C++ library (at exit, say) says where Python was."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from reverie.cli import main as m\n"
        "def crashing_command(rest):\n"
        "    os.abort()\n"
        "m.COMMANDS['crash'] = crashing_command\n"
        "m.main(['crash'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "Fatal Python error: Aborted" in done.stderr and "crashing_command" in done.stderr
