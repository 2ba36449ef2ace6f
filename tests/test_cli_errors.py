"""User errors give one clear line and exit status 2, never a traceback."""

import json
import subprocess
import sys

import pytest

from credo.cli import main, resolve_config


def _err(capsys, argv):
    code = main(argv)
    return code, capsys.readouterr().err


def test_unknown_preset_lists_valid_ones(capsys):
    code, err = _err(capsys, ["train", "--preset", "huge"])
    assert code == 2 and "unknown preset 'huge'" in err and "default" in err and "tiny" in err


def test_unknown_objective_lists_valid_ones(capsys, tmp_path):
    code, err = _err(capsys, ["train", "--preset", "tiny", "--rl.objective", "grpp", "--run.out_dir", str(tmp_path)])
    assert code == 2 and "unknown objective 'grpp'" in err and "grpo" in err


def test_unknown_field_and_bad_value(capsys):
    code, err = _err(capsys, ["train", "--preset", "tiny", "--rl.clip_hihg", "0.3"])
    assert code == 2 and "clip_hihg" in err and "clip_high" in err
    code, err = _err(capsys, ["train", "--preset", "tiny", "--rl.steps", "many"])
    assert code == 2 and "rl.steps" in err


def test_missing_model_folder(capsys, tmp_path):
    code, err = _err(capsys, ["eval", "--model", str(tmp_path / "nope")])
    assert code == 2 and "model not found" in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    code, err = _err(capsys, ["eval", "--model", str(tmp_path / "m")])
    assert code == 2 and "no weight files" in err


def test_missing_config_file(capsys, tmp_path):
    code, err = _err(capsys, ["train", "--config", str(tmp_path / "c.toml")])
    assert code == 2 and "config file not found" in err


def test_malformed_jsonl_row_names_file_line_and_field(capsys, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n" + json.dumps({"prompt": "2+2"}) + "\n")
    code, err = _err(capsys, ["eval", "--model", "tiny", "--task", "jsonl", "--task.params.path", str(data), "--n", "1"])
    assert code == 2 and str(data) in err and ":2" in err and "answer" in err


def test_config_precedence_preset_file_override(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('preset = "tiny"\n[rl]\nlr = 0.5\nclip_high = 0.3\n[task.params]\ndifficulty = 3\n')
    cfg = resolve_config(None, str(toml), [("rl.clip_high", "0.28")])
    assert cfg.model.name == "tiny"  # from the preset the file names
    assert cfg.rl.lr == 0.5  # from the file
    assert cfg.rl.clip_high == 0.28  # the override wins
    assert cfg.task.params == {"difficulty": 3}


def test_console_script_exits_2_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "credo.cli", "train", "--preset", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown preset" in proc.stderr
