"""The malformed invocations a new user tried (issue 10): each must print one line on stderr naming the
field, file or flag, exit 2, and leave an existing run folder as it was."""

import json
import subprocess
import sys

import pytest

from credo.cli import main

TRAIN = ["train", "--preset", "tiny", "--run.progress", "false"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "preset.toml").write_text("preset = 5\n")
    (d / "latin1.toml").write_bytes(b"\xff\xfe[rl]\n")
    (d / "list.json").write_text("[1, 2]")
    (d / "string.json").write_text('"x"')
    (d / "deep.json").write_text('{"a":' * 5000 + "1" + "}" * 5000)
    (d / "afile").write_text("")
    from credo.models import load_policy

    tiny = load_policy("tiny")
    for name, content in (("corrupt", b"\x00" * 1000), ("empty", b"")):
        tiny.model.save_pretrained(d / name)
        tiny.tokenizer.save_pretrained(d / name)
        (d / name / "model.safetensors").write_bytes(content)
    return d


CASES = [  # (argv with {d} for the files folder, a word the one line must hold)
    (["train", "--config", "{d}/preset.toml"], "preset"),
    (["train", "--config", "{d}/latin1.toml"], "not UTF-8"),
    (["train", "--config", "{d}/list.json"], "top level"),
    (["train", "--config", "{d}/string.json"], "top level"),
    (["train", "--config", "{d}/deep.json"], "nested too deeply"),
    (TRAIN + ["--task.eval_batch_size", "0"], "task.eval_batch_size"),
    (TRAIN + ["--warmup.batch_size", "0"], "warmup.batch_size"),
    (TRAIN + ["--sampling.top_p", "0"], "sampling.top_p"),
    (TRAIN + ["--model.threads", "-1"], "model.threads"),
    (TRAIN + ["--rl.lr", "nan"], "rl.lr"),
    (TRAIN + ["--rl.lr", "-1"], "rl.lr"),
    (TRAIN + ["--run.out_dir", "{d}/afile/sub"], "run.out_dir"),
    (TRAIN + ["--run.out_dir", "/proc/credo-test"], "run.out_dir"),
    (TRAIN + ["--task.eval_size", "-1"], "task.eval_size"),
    (TRAIN + ["--sampling.max_new_tokens", "0"], "sampling.max_new_tokens"),
    (TRAIN + ["--sampling.temperature", "-1"], "sampling.temperature"),
    (TRAIN + ["--sampling.top_k", "-1"], "sampling.top_k"),
    (TRAIN + ["--rl.max_grad_norm", "-1"], "rl.max_grad_norm"),
    (["eval", "--model", "{d}/corrupt", "--n", "2"], "cannot load the model"),
    (["eval", "--model", "{d}/empty", "--n", "2"], "cannot load the model"),
    (["eval", "--model", "tiny", "--n", "-1"], "--n"),
    (["eval", "--model", "tiny", "--n", "0"], "--n"),
    (["eval", "--model", "tiny", "--n", "2", "--sampling.top_k", "-1"], "sampling.top_k"),
    (["generate", "--model", "tiny", "--n", "-1", "hi"], "--n"),
    (["generate", "--model", "tiny", "--n", "0", "hi"], "--n"),
    (["generate", "--model", "tiny", ""], "prompt is empty"),
    (["generate", "--model", "tiny", "\udcff\udcfe"], "not valid UTF-8"),  # argv bytes 0xff 0xfe
    (["generate", "--model", "tiny", "--temperature", "-1", "hi"], "--temperature"),
    (["creditbench", "--quick", "--seeds", "0", "--out", "{d}/cb"], "--seeds"),
]


@pytest.mark.parametrize("argv,word", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_invocation_is_one_line_and_exit_2(bad_files, tmp_path, capsys, argv, word):
    argv = [a.replace("{d}", str(bad_files)) for a in argv]
    if argv[0] == "train" and "--run.out_dir" not in argv:
        argv += ["--run.out_dir", str(tmp_path / "runs")]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: ") and word in err[0], err
    assert not (bad_files / "cb").exists()


def test_an_existing_run_folder_keeps_what_it_had(tmp_path, capsys):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"phase": "rl", "step": 0}\n')
    (run / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for extra in (["--rl.lr", "-1"], []):  # a bad field; a good config on an unfinished run folder
        code = main(TRAIN + ["--run.out_dir", str(tmp_path / "runs"), "--run.name", "mine", *extra])
        assert code == 2
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert len(capsys.readouterr().err.strip().splitlines()) == 2


def test_non_utf8_argv_bytes_through_the_real_entry_point(tmp_path):
    """The operating system hands Python raw bytes; credo must not crash on them."""
    proc = subprocess.run([sys.executable.encode(), b"-m", b"credo", b"generate", b"--model", b"tiny", b"\xff\xfe"],
                          capture_output=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0], lines


def test_a_json_config_with_a_wrong_field_type_names_the_field(tmp_path, capsys):
    (tmp_path / "c.json").write_text(json.dumps({"sampling": {"stop": [1, 2]}}))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--run.out_dir", str(tmp_path)]) == 2
    assert "sampling.stop" in capsys.readouterr().err
