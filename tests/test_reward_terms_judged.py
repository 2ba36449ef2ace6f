"""Model-judged reward terms: PromptEcho's `likelihood` (rewards/likelihood.py) and AutoRule's rule extraction and
`autorule` term (rewards/autorule.py), against direct computations on tiny models, hand-checked rule parsing and
merging, a stub judge with chosen verdicts, bad configuration, and a tiny training run for each term."""

from __future__ import annotations

import json
import math

import pytest
import torch

from credo.errors import CredoError
from credo.judges.llm import TEMPLATES, LLMJudge, user_turn_ids
from credo.models import load_policy
from credo.rewards.autorule import (AutoRuleReward, merge_rules, normalise_rule, parse_rules, read_rule_pairs,
                                    rule_fraction, token_jaccard)
from credo.rewards.likelihood import DEFAULT_QUERY, PromptEchoLikelihood
from credo.rewards.terms import TermInputs, make_reward_mix
from credo.tasks.base import Score


@pytest.fixture(scope="module")
def tiny():
    return load_policy("tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_folder(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


def _inputs(prompts, texts, answers):
    n = len(texts)
    return TermInputs(list(texts), [len(t) for t in texts], list(answers), [Score(0.0, False, False)] * n,
                      list(range(n)), [str(i) for i in range(n)], prompts=list(prompts))


def _direct_mean_logprob(policy, prompt, completion, answer, max_tokens=10_000):
    """Independent reference: one unpadded forward over the whole row, full logits, log-softmax, mean."""
    tok = policy.tokenizer
    query = user_turn_ids(tok, DEFAULT_QUERY.format(prompt=prompt, completion=completion))
    label = tok.encode(answer, add_special_tokens=False)
    ids = (query + label)[-max_tokens:]
    n = min(len(label), len(ids) - 1)
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logp[-n:].mean())


ROWS = [("What is 2+3?", "2+3 = 5, so <answer>5</answer>", "5"),
        ("What is 2+3?", "", "5"),  # an empty completion is fine
        ("Name the capital of France.", "It is Paris.", "Paris"),
        ("What is 12*12?", "Let me think. 12*12 = 144. <answer>144</answer>", "144"),
        ("Spell cat.", "c-a-t", "cat"),
        ("What is 7-9?", "<answer>-2</answer> because 9 is larger", "-2")]


# --- likelihood ---------------------------------------------------------------------------------------

def test_likelihood_equals_a_direct_per_row_computation(tiny):
    term = PromptEchoLikelihood(model=tiny)
    prompts, texts, answers = zip(*ROWS)
    got = term(_inputs(prompts, texts, answers))
    want = [_direct_mean_logprob(tiny, *row) for row in ROWS]
    assert got == pytest.approx(want, abs=1e-5)
    assert all(w < 0 for w in want)  # log-probs of a random model: far below 0
    exp_term = PromptEchoLikelihood(model=tiny, normalize="exp")
    got_exp = exp_term(_inputs(prompts, texts, answers))
    assert got_exp == pytest.approx([math.exp(w) for w in want], rel=1e-5)
    assert all(0.0 < v < 1.0 for v in got_exp)


def test_likelihood_batched_equals_one_by_one_and_caches(tiny):
    prompts, texts, answers = zip(*ROWS)
    batched = PromptEchoLikelihood(model=tiny, batch_size=8)
    got = batched(_inputs(prompts, texts, answers))
    single = [PromptEchoLikelihood(model=tiny, batch_size=1)(_inputs([p], [t], [a]))[0] for p, t, a in ROWS]
    assert got == pytest.approx(single, abs=1e-5)
    assert batched.forward_rows == len(ROWS) and batched.cache_hits == 0
    again = batched(_inputs(prompts + prompts[:2], texts + texts[:2], answers + answers[:2]))
    assert again == got + got[:2] and batched.forward_rows == len(ROWS) and batched.cache_hits == len(ROWS) + 2
    # the cache is the term's state: a restored term answers from it without running its model
    restored = PromptEchoLikelihood(model=tiny)
    restored.load_state(json.loads(json.dumps(batched.state())))
    assert restored(_inputs(prompts, texts, answers)) == got and restored.forward_rows == 0
    dup = PromptEchoLikelihood(model=tiny)  # the same row twice in one call: one forward row
    assert dup(_inputs(prompts[:1] * 2, texts[:1] * 2, answers[:1] * 2)) == [got[0]] * 2 and dup.forward_rows == 1


def test_likelihood_truncates_from_the_left_and_handles_long_answers(tiny):
    prompt, completion = "What is the long answer?", "Some reasoning here."
    long_answer = "one two three four five six seven eight nine ten eleven twelve"
    n_answer = len(tiny.tokenizer.encode(long_answer, add_special_tokens=False))
    assert n_answer > 8
    for max_tokens in (6, n_answer, n_answer + 4):  # shorter than the answer, equal, a little longer
        term = PromptEchoLikelihood(model=tiny, max_tokens=max_tokens)
        got = term(_inputs([prompt], [completion], [long_answer]))[0]
        assert got == pytest.approx(_direct_mean_logprob(tiny, prompt, completion, long_answer, max_tokens), abs=1e-5)
    # max_tokens 6 scores the answer's last 5 tokens only: by hand from the full-sequence reference
    ids = tiny.tokenizer.encode(long_answer, add_special_tokens=False)[-6:]
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0].float()
    by_hand = float(torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).mean())
    assert PromptEchoLikelihood(model=tiny, max_tokens=6)(_inputs([prompt], [completion], [long_answer]))[0] == \
        pytest.approx(by_hand, abs=1e-5)


def test_likelihood_without_a_reference_answer_scores_zero_without_a_forward(tiny):
    term = PromptEchoLikelihood(model=tiny)
    assert term(_inputs(["Say hi.", "Say hi."], ["hi", ""], ["", ""])) == [0.0, 0.0]
    assert term.forward_rows == 0
    assert term(_inputs([], [], [])) == []
    with pytest.raises(ValueError, match="needs the prompts"):
        term(TermInputs(["x"], [1], ["a"], [Score(0.0, False, False)], [0], ["0"]))


# --- AutoRule: parsing and merging by hand -----------------------------------------------------------

CANNED = """Here are the rules:
1. The response should state the final answer explicitly.
2) **Keep the response concise**
- Use examples
* Avoid   repeating the question!
Rule 5: The response should state the final answer explicitly
   - Cite sources when making factual claims.
## Formatting
(6) Use numbered steps for multi-step solutions.
"""


def test_parse_rules_on_canned_text():
    assert parse_rules(CANNED) == [
        "The response should state the final answer explicitly.",  # "1." stripped; the "Rule 5:" repeat dropped
        "Keep the response concise",  # "2)" and the markdown bold stripped
        "Avoid   repeating the question!",  # "* " stripped ("- Use examples" has 2 words: a fragment, dropped)
        "Cite sources when making factual claims.",  # indented bullet
        "Use numbered steps for multi-step solutions.",  # "(6)"; "## Formatting" (1 word) and the heading dropped
    ]
    assert parse_rules("") == [] and parse_rules("no newline but a rule here") == ["no newline but a rule here"]
    assert parse_rules("x" * 400 + " a b") == []  # a paragraph, not a rule
    assert normalise_rule("  Avoid   repeating the question! ") == "avoid repeating the question"


def test_token_jaccard_and_merging_by_hand():
    # {keep, the, response, concise} vs {keep, responses, concise}: {keep, concise} / 5 words
    assert token_jaccard("Keep the response concise", "keep responses concise.") == pytest.approx(2 / 5)
    assert token_jaccard("Be concise and clear", "be clear, and concise!") == 1.0
    candidates = [
        ["State the final answer explicitly.", "Keep the response concise."],
        ["state the final answer explicitly", "Use examples to illustrate points."],  # equal when normalised
        ["Keep the whole response concise.", "Use examples to illustrate points"],  # J = 4/5 with rule 2; equal
        ["Avoid jargon."],
    ]
    merged = merge_rules(candidates, max_rules=16, jaccard=0.6)
    assert merged == [("State the final answer explicitly.", 2), ("Keep the response concise.", 2),
                      ("Use examples to illustrate points.", 2), ("Avoid jargon.", 1)]
    assert merge_rules(candidates, max_rules=2, jaccard=0.6) == merged[:2]  # support, then first appearance
    strict = merge_rules(candidates, max_rules=16, jaccard=0.9)  # 4/5 < 0.9: the "whole" wording stays apart
    assert ("Keep the whole response concise.", 1) in strict and ("Keep the response concise.", 1) in strict
    assert merge_rules([], max_rules=4) == [] and merge_rules([[]], max_rules=4) == []


# --- AutoRule: the term with a stub judge, and with the real LLM judge ---------------------------------

class StubJudge:
    """q per (response, rule), chosen by hand; records every call."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def yes_probability(self, template, fields):
        self.calls.append((template, list(fields)))
        return [self.table[(f["response"], f["rule"])] for f in fields]


RULES = ["Give the answer in tags.", "Be short.", "Show the work.", "No text after the answer."]


def test_autorule_fraction_with_a_stub_judge():
    q = {("a", RULES[0]): 0.9, ("a", RULES[1]): 0.5, ("a", RULES[2]): 0.49, ("a", RULES[3]): 0.1,
         ("b", RULES[0]): 0.2, ("b", RULES[1]): 0.2, ("b", RULES[2]): 0.2, ("b", RULES[3]): 0.2,
         ("", RULES[0]): 1.0, ("", RULES[1]): 1.0, ("", RULES[2]): 0.7, ("", RULES[3]): 0.6}
    judge = StubJudge(q)
    term = AutoRuleReward(rules=RULES, judge=judge)
    batch = _inputs(["p", "p", "p"], ["a", "b", ""], ["", "", ""])
    # a: 0.9, 0.5 (>= 0.5 counts) pass, 0.49, 0.1 fail -> 2/4; b: none -> 0; "": all four -> 1
    assert term(batch) == [0.5, 0.0, 1.0]
    assert len(judge.calls) == 1 and judge.calls[0][0] == "rule" and len(judge.calls[0][1]) == 12  # one call, B x K
    assert judge.calls[0][1][1] == {"prompt": "p", "response": "a", "rule": RULES[1]}
    assert term.judge_calls == 12
    assert term(batch) == [0.5, 0.0, 1.0] and len(judge.calls) == 1 and term.cache_hits == 12  # from the cache
    soft = AutoRuleReward(rules=RULES, judge=StubJudge(q), soft=True)
    assert soft(batch) == pytest.approx([(0.9 + 0.5 + 0.49 + 0.1) / 4, 0.2, (1 + 1 + 0.7 + 0.6) / 4])
    strict = AutoRuleReward(rules=RULES, judge=StubJudge(q), threshold=0.8)
    assert strict(batch) == [0.25, 0.0, 0.5]
    assert term(_inputs([], [], [])) == []
    restored = AutoRuleReward(rules=RULES, judge=StubJudge({}))  # an empty table: any query would raise
    restored.load_state(json.loads(json.dumps(term.state())))
    assert restored(batch) == [0.5, 0.0, 1.0]
    assert rule_fraction(torch.tensor([[float("nan"), 1.0]])).tolist() == [0.5]


def test_autorule_with_the_llm_judge_equals_yes_probability_directly(tiny):
    judge = LLMJudge(tiny.model, tiny.tokenizer, low=0.0, high=1.0, batch_size=4)
    prompts, texts = ["What is 2+3?", "Name a color."], ["<answer>5</answer>", "Blue, I think."]
    reference = LLMJudge(tiny.model, tiny.tokenizer, low=0.0, high=1.0, batch_size=1, cache_size=0)
    q = torch.tensor([[reference.yes_probability("rule", [{"prompt": p, "response": t, "rule": r}])[0] for r in RULES]
                      for p, t in zip(prompts, texts)])
    text = TEMPLATES["rule"].format(prompt=prompts[0], response=texts[0], rule=RULES[0])
    assert "Does the response follow this rule?" in text and RULES[0] in text
    soft = AutoRuleReward(rules=RULES, judge=judge, soft=True)(_inputs(prompts, texts, ["", ""]))
    assert soft == pytest.approx(q.mean(-1).tolist(), abs=1e-5)
    s = q.flatten().sort().values  # a threshold in the widest gap of q: some rules pass, some fail, and float
    gap = int((s[1:] - s[:-1]).argmax())  # rounding between batch layouts cannot move a q across it
    threshold = float(s[gap] + s[gap + 1]) / 2
    hard = AutoRuleReward(rules=RULES, judge=judge, threshold=threshold)(_inputs(prompts, texts, ["", ""]))
    assert hard == (q >= threshold).float().mean(-1).tolist() and 0.0 < sum(hard) < 2.0


# --- AutoRule: extraction end to end ------------------------------------------------------------------

LINE_1, LINE_2 = "- Give the final answer in tags.", "* Keep responses short and clear!"


def scripted_llama(tokenizer, folder):
    """A tiny Llama whose greedy reply to any chat prompt is LINE_1 + "\\n\\n" + LINE_2 then EOS: its layers add
    nothing to the residual stream (o_proj, down_proj = 0), so the logits depend on the current token only,
    and the untied output head maps each token of the reply to the next one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).float()
    start = user_turn_ids(tokenizer, "x")[-1]  # the generation prompt's last token
    blank = tokenizer.convert_tokens_to_ids("\u010a\u010a")  # "\n\n" as one token (encode splits it)
    chain = [start] + tokenizer.encode(LINE_1, add_special_tokens=False) + [blank] + \
        tokenizer.encode(LINE_2, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert len(set(chain[:-1])) == len(chain) - 1  # each token has one successor
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for a, b in zip(chain, chain[1:]):
            head[b] = 10.0 * emb[a] / emb[a].norm()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


PAIRS = [{"prompt": "What is 2+3?", "chosen": "2+3 = 5. <answer>5</answer>", "rejected": "<answer>6</answer>"},
         {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "I do not know.",
          "rationale": "The chosen response answers directly.\n- It answers the question directly."},
         {"prompt": "What is 4+4?", "chosen": "<answer>8</answer>", "rejected": "eight maybe"}]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_extract_rules_end_to_end_is_deterministic(tiny, tmp_path):
    from credo.cli import main

    folder = scripted_llama(tiny.tokenizer, tmp_path / "writer")
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    args = ["extract-rules", "--pairs", str(pairs), "--model", str(folder), "--max-new-tokens", "24"]
    assert main(args + ["--out", str(tmp_path / "a" / "rules.json")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.json")]) == 0
    first = (tmp_path / "a" / "rules.json").read_text()
    assert first == (tmp_path / "b.json").read_text()  # greedy and seeded: the same file twice
    doc = json.loads(first)
    rules = ["Give the final answer in tags.", "Keep responses short and clear!"]
    assert doc["rules"] == rules
    assert doc["counts"] == {rules[0]: 3, rules[1]: 3}  # every rationale's rule list holds both
    src = doc["source"]
    assert src["rows"] == 3 and src["rationales_written"] == 2 and src["candidates"] == 6 and src["pairs"] == str(pairs)
    # the file feeds the term directly
    assert AutoRuleReward(rules=str(tmp_path / "b.json"), judge=StubJudge({})).rules == rules
    assert main(args + ["--out", str(tmp_path / "c.json"), "--max-rules", "1"]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["rules"] == rules[:1]


def test_extract_rules_errors_name_the_row_and_field(tiny_folder, tmp_path, capsys, monkeypatch):
    import credo.models
    from credo.cli import main

    bad = _write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "x", "rejected": "y"}])
    with pytest.raises(CredoError, match=r"bad\.jsonl:2: field 'chosen' must be a non-empty string \(missing\)"):
        read_rule_pairs(bad)
    bad_rationale = _write_jsonl(tmp_path / "r.jsonl", [dict(PAIRS[0], rationale=3)])
    with pytest.raises(CredoError, match=r"r\.jsonl:1: field 'rationale' must be a string"):
        read_rule_pairs(bad_rationale)
    csv = tmp_path / "pairs.csv"  # CSV through read_records: an empty cell is an empty string
    csv.write_text("prompt,chosen,rejected,rationale\nWhat is 1+1?,2,3,\nWhat is 2+2?,4,,why\n")
    with pytest.raises(CredoError, match=r"pairs\.csv:3: field 'rejected'"):
        read_rule_pairs(csv)
    csv.write_text("prompt,chosen,rejected,rationale\nWhat is 1+1?,2,3,\n")
    assert read_rule_pairs(csv)[0].rationale is None  # an empty rationale cell: the model writes one
    monkeypatch.setattr(credo.models, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["extract-rules", "--pairs", str(bad), "--model", str(tiny_folder), "--out", str(tmp_path / "o.json")]) == 2
    assert "bad.jsonl:2: field 'chosen'" in capsys.readouterr().err
    assert main(["extract-rules", "--pairs", str(bad), "--model", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "--model" in capsys.readouterr().err
    assert main(["extract-rules", "--pairs", str(bad), "--out", "o.json", "--jaccard", "0"]) == 2
    assert not (tmp_path / "o.json").exists()


def test_a_random_model_that_writes_no_rule_is_an_error(tiny_folder, tmp_path, capsys):
    from credo.cli import main

    pairs = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS[1:2])  # (has a rationale: one generation stage)
    out = tmp_path / "rules.json"
    assert main(["extract-rules", "--pairs", str(pairs), "--model", str(tiny_folder), "--out", str(out),
                 "--max-new-tokens", "8"]) == 2
    assert "wrote no parseable rule" in capsys.readouterr().err and not out.exists()


# --- configuration: errors name the field, before any model loads ------------------------------------

def test_bad_params_name_the_field_before_any_model_loads(tmp_path, monkeypatch):
    import credo.models
    from credo.cli import resolve_config
    from credo.train.run import validate

    monkeypatch.setattr(credo.models, "load_policy", lambda *a, **k: pytest.fail("a model was loaded"))
    cases = [
        ({"likelihood": {"modle": "tiny"}}, r"rl.reward_term_params\['likelihood'\].*modle"),
        ({"likelihood": {"model": str(tmp_path / "nowhere")}}, r"\['likelihood'\]\['model'\]"),
        ({"likelihood": {"model": "tiny", "normalize": "log"}}, r"\['likelihood'\]\['normalize'\]"),
        ({"likelihood": {"model": "tiny", "template": "{prompt} only"}}, r"\['likelihood'\]\['template'\]"),
        ({"likelihood": {"model": "tiny", "template": "{completion} {answer}"}}, r"\['template'\].*answer"),
        ({"likelihood": {"model": "tiny", "max_tokens": 1}}, r"\['likelihood'\]\['max_tokens'\]"),
        ({"autorule": {"judge": "tiny"}}, r"\['autorule'\]\['rules'\]: required"),
        ({"autorule": {"rules": str(tmp_path / "missing.json"), "judge": "tiny"}},
         r"\['autorule'\]\['rules'\]: rules file not found"),
        ({"autorule": {"rules": [], "judge": "tiny"}}, r"\['autorule'\]\['rules'\]"),
        ({"autorule": {"rules": ["ok rule", ""], "judge": "tiny"}}, r"\['autorule'\]\['rules'\]\[1\]"),
        ({"autorule": {"rules": ["r"], "judge": "tiny", "threshold": 1.5}}, r"\['autorule'\]\['threshold'\]"),
        ({"autorule": {"rules": ["r"], "judge": "tiny", "soft": "yes"}}, r"\['autorule'\]\['soft'\]"),
        ({"autorule": {"rules": ["r"], "judge": "tiny", "treshold": 0.4}}, r"rl.reward_term_params\['autorule'\]"),
    ]
    for params, pattern in cases:
        weights = {name: 1.0 for name in params}
        cfg = resolve_config("tiny", None, [("rl.reward_terms", json.dumps(weights)),
                                            ("rl.reward_term_params", json.dumps(params))])
        with pytest.raises(CredoError, match=pattern):
            validate(cfg)
    (tmp_path / "norules.json").write_text('{"rule": []}')
    with pytest.raises(CredoError, match="has no \"rules\" list"):
        make_reward_mix({"autorule": 1.0}, {"autorule": {"rules": str(tmp_path / "norules.json"), "judge": "tiny"}})
    good = resolve_config("tiny", None, [("rl.reward_terms", '{"likelihood": 1.0, "autorule": 1.0}'),
                                         ("rl.reward_term_params", '{"likelihood": {"model": "tiny"}, '
                                                                   '"autorule": {"rules": ["Be short."], "judge": "tiny"}}')])
    validate(good)  # (loads nothing: load_policy would fail the test)


# --- training ------------------------------------------------------------------------------------------

def _train(tmp_path, name, terms, params):
    from credo.cli import resolve_config
    from credo.train.logging import read_metrics
    from credo.train.run import train

    cfg = resolve_config("tiny", None, [("rl.reward_terms", json.dumps(terms)),
                                        ("rl.reward_term_params", json.dumps(params)), ("rl.steps", "2"),
                                        ("run.out_dir", str(tmp_path)), ("run.name", name), ("run.progress", "false"),
                                        ("run.eval_base", "false"), ("warmup.steps", "1"), ("task.eval_size", "4"),
                                        ("model.threads", "1")])
    train(cfg)
    rl = [r for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["phase"] == "rl"]
    state = json.loads((tmp_path / name / "checkpoints" / "final" / "state.json").read_text())
    return rl, state


def test_likelihood_trains_from_the_config(tmp_path, tiny_folder):
    rl, state = _train(tmp_path, "echo", {"task": 1.0, "likelihood": 0.5},
                       {"likelihood": {"model": str(tiny_folder), "normalize": "exp", "max_tokens": 256}})
    assert len(rl) == 2
    for row in rl:
        assert 0.0 < row["reward/likelihood"] < 1.0 and "reward/likelihood_errors" not in row, row
    cache = state["reward_terms"]["likelihood"]["cache"]
    assert len(cache["keys"]) == len(cache["values"]) > 0 and all(0.0 < v < 1.0 for v in cache["values"])


def test_autorule_trains_from_the_config(tmp_path, tiny_folder):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": ["Give the answer in answer tags.", "Keep the response short."]}))
    rl, state = _train(tmp_path, "rules", {"task": 1.0, "autorule": 1.0},
                       {"autorule": {"rules": str(rules), "judge": str(tiny_folder), "soft": True, "max_tokens": 256}})
    assert len(rl) == 2
    for row in rl:
        assert 0.0 < row["reward/autorule"] < 1.0 and "reward/autorule_errors" not in row, row
    cache = state["reward_terms"]["autorule"]["cache"]
    assert len(cache["keys"]) > 0 and len(cache["keys"]) % 2 == 0  # (completion, rule) pairs: two rules each


@pytest.mark.parametrize("term, params", [
    ("likelihood", {"model": "tiny", "max_tokens": 128}),
    ("autorule", {"rules": ["Give the answer in answer tags.", "Keep it short."], "judge": "tiny", "soft": True,
                  "max_tokens": 128}),
])
@pytest.mark.slow  # a SIGKILL / resume replay (minutes in CI): run with -m slow
def test_judged_term_cache_survives_a_sigkill_and_resumes_bitwise(tmp_path, term, params):
    """The verdict cache is the term's state: in every RL checkpoint, restored on --resume, so a run killed
    mid-way ends with the uninterrupted run's metrics, cache and weights (test_resume.py's pattern)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))  # (import mode is importlib)
    from test_resume import ARGS, _assert_same_final_weights, _comparable, _credo, _kill_then_resume

    args = ARGS + ["--rl.steps", "3", "--rl.reward_terms", json.dumps({"task": 1.0, term: 1.0}),
                   "--rl.reward_term_params", json.dumps({term: params}), "--rl.prompt_pool", "2"]
    ref = _credo(args + ["--run.out_dir", str(tmp_path), "--run.name", "ref"])
    assert ref.returncode == 0, ref.stderr[-2000:]
    _kill_then_resume(args + ["--run.out_dir", str(tmp_path), "--run.name", "crash"], "update:2", tmp_path / "crash")
    assert _comparable(tmp_path / "crash") == _comparable(tmp_path / "ref")
    states = [json.loads((tmp_path / n / "checkpoints" / "final" / "state.json").read_text()) for n in ("ref", "crash")]
    assert states[0]["reward_terms"] == states[1]["reward_terms"] and states[0]["reward_terms"][term]["cache"]["keys"]
    _assert_same_final_weights(tmp_path / "ref", tmp_path / "crash")
