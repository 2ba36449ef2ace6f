"""Layer-dropped students (credo/models.py): the evenly spaced indices by hand, kept weights equal to the
source's, a forward equal to the source run through only the kept layers, the saved folder, the
`smollm2-layers:<k>` name (on a tiny stand-in for the bundled model) and `credo make-student`."""

from __future__ import annotations

import json

import pytest
import torch

from credo.errors import CredoError
from credo.models import decoder_layers, drop_layers, evenly_spaced_layers, load_policy, make_student, tiny_model


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tiny_policy):
    """A 4-layer tiny Llama (SmolLM2's tokenizer), seed 3."""
    return tiny_model(tiny_policy.tokenizer, seed=3, layers=4).eval()


def test_evenly_spaced_layers_by_hand():
    # round(i (L - 1) / (k - 1)), halves up: 29 / 9 = 3.22 -> 0 3 6.44 9.67 12.9 16.1 19.3 22.6 25.8 29
    assert evenly_spaced_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced_layers(4, 2) == [0, 3]
    assert evenly_spaced_layers(5, 3) == [0, 2, 4]
    assert evenly_spaced_layers(4, 3) == [0, 2, 3]  # 1.5 rounds up to 2
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    assert evenly_spaced_layers(4, 1) == [0]
    for bad in (0, 5):
        with pytest.raises(CredoError, match=rf"keep {bad} of 4"):
            evenly_spaced_layers(4, bad)


def test_drop_layers_keeps_the_source_weights_and_runs_the_kept_layers(source):
    student = drop_layers(source, [0, 3]).eval()
    assert student.config.num_hidden_layers == 2 and source.config.num_hidden_layers == 4
    assert len(decoder_layers(source)[1]) == 4  # the source is untouched
    src, out = source.state_dict(), student.state_dict()
    assert len(out) == len(src) - 2 * (len(src) - 3) // 4  # two of four layers' tensors gone, the rest kept
    for key, value in out.items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers."):].split(".", 1)
            original = src[f"model.layers.{[0, 3][int(index)]}.{rest}"]
        else:
            original = src[key]
        assert torch.equal(value, original), key
        assert value.data_ptr() != original.data_ptr()  # copies, not views of the source
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    assert [layer.self_attn.layer_idx for layer in student.model.layers] == [0, 1]
    # the student's forward = the source's embeddings -> layers 0 and 3 -> norm -> head (an independent path)
    tokens = torch.tensor([[1, 42, 7, 900, 13, 5]])
    with torch.no_grad():
        logits = student(tokens).logits
        h = source.model.embed_tokens(tokens)
        position_ids = torch.arange(tokens.shape[1])[None]
        rope = source.model.rotary_emb(h, position_ids)
        causal = torch.full((6, 6), float("-inf")).triu(1)[None, None]
        for i in (0, 3):
            h = source.model.layers[i](h, attention_mask=causal, position_ids=position_ids, position_embeddings=rope)
            h = h[0] if isinstance(h, tuple) else h
        reference = source.lm_head(source.model.norm(h))
    assert logits.shape == (1, 6, source.config.vocab_size)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # and it is not the 4-layer model's output
        assert not torch.allclose(logits, source(tokens).logits, atol=1e-3)


def test_drop_layers_rejects_bad_indices(source):
    for keep in ([], [0, 0], [4], [-1]):
        with pytest.raises(CredoError, match="distinct layer indices in 0..3"):
            drop_layers(source, keep)


def test_make_student_writes_a_loadable_folder(source, tiny_policy, tmp_path):
    folder = tmp_path / "teacher"
    source.save_pretrained(folder)
    tiny_policy.tokenizer.save_pretrained(folder)
    out = make_student(str(folder), 2, tmp_path / "student")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    meta = json.loads((out / "student.json").read_text())
    assert meta["kept_layers"] == [0, 3] and meta["source_layers"] == 4
    loaded = load_policy(str(out))
    assert loaded.tokenizer.get_vocab() == tiny_policy.tokenizer.get_vocab()
    torch.testing.assert_close(loaded.model.model.layers[1].mlp.down_proj.weight,
                               source.model.layers[3].mlp.down_proj.weight)
    with pytest.raises(CredoError, match="not an empty folder"):
        make_student(str(folder), 2, out)
    with pytest.raises(CredoError, match="keep 5 of 4"):
        make_student(str(folder), 5, tmp_path / "too_many")
    assert not (tmp_path / "too_many").exists()


def test_the_smollm2_layers_name_builds_once_from_the_bundled_model(source, tiny_policy, tmp_path, monkeypatch):
    """`smollm2-layers:2` on a stand-in for the bundled model (a 4-layer tiny folder): built once into the
    cache, reused after; bad names are CredoErrors."""
    import credo.models as models

    bundled = tmp_path / "bundled"
    source.save_pretrained(bundled)
    tiny_policy.tokenizer.save_pretrained(bundled)
    monkeypatch.setattr(models, "bundled_model_dir", lambda: bundled)
    monkeypatch.setenv("CREDO_CACHE", str(tmp_path / "cache"))
    policy = load_policy("smollm2-layers:2")
    cached = tmp_path / "cache" / "models" / "smollm2-135m-layers2"
    assert policy.source == str(cached) and policy.model.config.num_hidden_layers == 2
    assert json.loads((cached / "student.json").read_text())["kept_layers"] == [0, 3]
    torch.testing.assert_close(policy.model.model.layers[1].self_attn.q_proj.weight,
                               source.model.layers[3].self_attn.q_proj.weight)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached student was rebuilt")

    monkeypatch.setattr(models, "make_student", no_rebuild)
    assert load_policy("smollm2-layers:2").source == str(cached)
    for bad in ("smollm2-layers:", "smollm2-layers:x", "smollm2-layers:0", "smollm2-layers:-2"):
        with pytest.raises(CredoError, match="expected smollm2-layers:<k>"):
            load_policy(bad)
    monkeypatch.undo()
    monkeypatch.setattr(models, "bundled_model_dir", lambda: bundled)
    monkeypatch.setenv("CREDO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CredoError, match="keep 9 of 4"):
        load_policy("smollm2-layers:9")


def test_make_student_command(source, tiny_policy, tmp_path, capsys):
    from credo.cli import main

    folder = tmp_path / "src"
    source.save_pretrained(folder)
    tiny_policy.tokenizer.save_pretrained(folder)
    assert main(["make-student", "--layers", "3", "--out", str(tmp_path / "s"), "--model", str(folder)]) == 0
    assert "3-layer student" in capsys.readouterr().out
    assert json.loads((tmp_path / "s" / "student.json").read_text())["kept_layers"] == [0, 2, 3]
    assert main(["make-student", "--layers", "3", "--out", str(tmp_path / "s"), "--model", str(folder)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
