"""AutoRule: rules extracted from preference pairs by a model, then a rule-following reward term.

"AutoRule: Reasoning Chain-of-thought Extracted Rule-based Rewards Improve Preference Learning"
(Wang & Xiong, arXiv 2506.15651; code cxcscmu/AutoRule). Extraction, run once (`credo extract-rules`):

1. rationale: for each preference pair (x, y_chosen, y_rejected) a model explains step by step why the
   chosen response is better (the paper reads a reasoning model's chain of thought); a row that brings
   its own `rationale` skips this stage;
2. rules: from each rationale the model writes candidate rules, objectively checkable on one response
   and independent of the prompt; `parse_rules` keeps one rule per bullet / line;
3. merge: the candidates become one rule set. The paper asks the LLM again to merge duplicates and
   near-duplicates; here merging is deterministic instead: rules whose normalised text is equal, or
   whose word sets have a Jaccard similarity >= `jaccard` (0.6), fall into one cluster (a rule joins the
   most similar earlier cluster; the cluster keeps its first wording); clusters are ranked by how many
   candidates they hold (their support across rationales), ties by first appearance, and the top
   `max_rules` (16) are kept. (An LLM merge with a 135M model mostly loses rules; counting support also
   says which rules the data agrees on.)

Generation is greedy, seeded and batched in a fixed order, so the same pairs, model and settings write
the same rules.json: {"rules": [...], "counts": {rule: support}, "source": {pairs, model, rows, ...}}.

The reward (the `autorule` term): a judge answers, for each completion y_i of prompt x and each rule
k = 1..K, "does the response follow this rule?" (judges/llm.py's "rule" template, q_ik = p(Yes) /
(p(Yes) + p(No))), and

    r_i = (1 / K) sum_k 1[q_ik >= threshold]          (soft = false; threshold 0.5)
    r_i = (1 / K) sum_k q_ik                          (soft = true)

the fraction of rules satisfied (the paper's r_RA: a verifier's binary verdicts averaged over the rule
set; the paper adds it to a learned reward model's score, here it is one weighted term). All (completion,
rule) pairs of a step go to the judge in one call, cached by (prompt, completion, rule) in an LRU that
goes into every RL checkpoint (state.json "reward_terms"), so `--resume` is exact.

Status: reconstructed. The three stages, the fraction-of-rules reward and binary verdicts follow the
paper's description; the prompts are this module's wording of their intent (the official repository
could not be read here), the merge is deterministic clustering instead of an LLM call, and the
verdict is a yes/no log-prob read (threshold on q) instead of a sampled verifier answer.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from credo.entry import Entry
from credo.errors import CredoError
from credo.rewards.likelihood import ScoreCache, check_model_name, field_name, load_frozen, positive_int

RATIONALE_PROMPT = (
    "Here is a prompt and two responses to it.\n\nPrompt:\n{prompt}\n\nResponse A:\n{chosen}\n\n"
    "Response B:\n{rejected}\n\nA reviewer preferred Response A over Response B. "
    "Explain step by step why Response A is the better response.")
RULES_PROMPT = (
    "Here is an explanation of why one response was preferred over another:\n\n{rationale}\n\n"
    "From this explanation, write the general rules that a good response should follow. Each rule must be "
    "checkable on a single response alone and must not mention the specific prompt. "
    "Write one rule per line, each line starting with \"- \".")
MIN_RULE_WORDS = 3  # shorter lines are fragments ("Rules", "Response A"), not rules
MAX_RULE_CHARS = 300  # a longer line is a paragraph, not one checkable rule
_BULLET = re.compile(r"^\s*(?:[-*\u2022+>#]+|\(?\d{1,3}[.):]|\(?[a-z]\)|rule\s*\d+\s*[:.)-]|rule\s*:)\s*",
                     re.IGNORECASE)  # "- ", "3.", "(2)", "a)", "Rule 3:", "## "


# --- stage 2 and 3: parsing and merging (pure, no model) -----------------------------------------------

def parse_rules(text: str) -> list[str]:
    """Candidate rules in a model's output: one per line, bullets / numbers / "Rule 3:" stripped, markdown
    emphasis removed; headings (a line ending in ":"), fragments under MIN_RULE_WORDS words and lines over
    MAX_RULE_CHARS dropped; repeats within the text kept once (first wording). Never raises.

    >>> parse_rules("Rules:\\n1. Give the final answer first.\\n- **Be concise** and clear\\n* ok\\n2) Give the final answer first")
    ['Give the final answer first.', 'Be concise and clear']
    """
    out, seen = [], set()
    for line in str(text).splitlines():
        rule = line.strip().replace("**", "").replace("__", "")
        for _ in range(2):  # "1. - rule" has two markers
            rule = _BULLET.sub("", rule, count=1).strip()
        rule = rule.strip("`\"' ")
        if not rule or rule.endswith(":") or len(rule) > MAX_RULE_CHARS:
            continue
        if len(rule_words(rule)) < MIN_RULE_WORDS:
            continue
        key = normalise_rule(rule)
        if key not in seen:
            seen.add(key)
            out.append(rule)
    return out


def normalise_rule(rule: str) -> str:
    """Lower case, every run of non-alphanumerics one space: "Be  concise!" -> "be concise"."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", rule.lower()).split())


def rule_words(rule: str) -> list[str]:
    return normalise_rule(rule).split()


def token_jaccard(a: str, b: str) -> float:
    """|W(a) & W(b)| / |W(a) | W(b)| over the sets of normalised words (1.0 for two empty rules).

    >>> token_jaccard("Be concise and clear.", "be clear and concise"), token_jaccard("use examples", "cite sources")
    (1.0, 0.0)
    """
    wa, wb = set(rule_words(a)), set(rule_words(b))
    return 1.0 if not wa and not wb else len(wa & wb) / len(wa | wb)


def merge_rules(candidates: Sequence[Sequence[str]], *, max_rules: int = 16,
                jaccard: float = 0.6) -> list[tuple[str, int]]:
    """Stage 3 (see the module docstring): [(rule, support)] ranked by support, at most max_rules.

    candidates: one list of rules per rationale, in row order. A rule joins the earlier cluster with the
    highest Jaccard similarity to its first wording when that is >= jaccard (or the normalised texts are
    equal), else starts a cluster.
    """
    clusters: list[list[Any]] = []  # [wording, normalised, word set, support]
    for rules in candidates:
        for rule in rules:
            norm, words = normalise_rule(rule), set(rule_words(rule))
            best, best_sim = None, -1.0
            for c in clusters:
                sim = 1.0 if norm == c[1] else (len(words & c[2]) / len(words | c[2]) if words | c[2] else 1.0)
                if sim > best_sim:
                    best, best_sim = c, sim
            if best is not None and best_sim >= jaccard:
                best[3] += 1
            else:
                clusters.append([rule, norm, words, 1])
    ranked = sorted(range(len(clusters)), key=lambda i: (-clusters[i][3], i))
    return [(clusters[i][0], clusters[i][3]) for i in ranked[:max_rules]]


# --- stage 1 and 2: the model writes rationales and rules --------------------------------------------

@dataclass(frozen=True)
class RulePair:
    prompt: str
    chosen: str
    rejected: str
    rationale: str | None = None


def read_rule_pairs(path: str | Path) -> list[RulePair]:
    """Rows {prompt, chosen, rejected, rationale?} of a JSONL / Parquet / CSV file or datasets folder;
    a CredoError names the file, the row and the field (nothing is loaded before this passes)."""
    from credo.tasks.data_files import read_records, type_name

    rows = []
    for record in read_records(path):
        where, row = record.where, record.row
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(name), str) or not row[name].strip():
                got = "missing" if name not in row else f"got {type_name(row[name])} {row[name]!r:.40}"
                raise CredoError(f"{where}: field {name!r} must be a non-empty string ({got})")
        rationale = row.get("rationale")
        if rationale is not None and not isinstance(rationale, str):
            raise CredoError(f"{where}: field 'rationale' must be a string when present, got {type_name(rationale)}")
        rows.append(RulePair(row["prompt"], row["chosen"], row["rejected"],
                             rationale if rationale and rationale.strip() else None))
    if not rows:
        raise CredoError(f"{path}: no preference pairs")
    return rows


def generate_greedy(model, tokenizer, texts: Sequence[str], *, max_new_tokens: int, max_prompt_tokens: int,
                    batch_size: int, seed: int) -> list[str]:
    """One greedy reply per user message, in batches of batch_size in the given order (deterministic)."""
    from credo.judges.llm import user_turn_ids
    from credo.rollout.base import SamplingParams
    from credo.rollout.torch_engine import TorchEngine

    engine = TorchEngine(model, tokenizer)
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = [user_turn_ids(tokenizer, t)[-max_prompt_tokens:] for t in texts]
    out: list[str] = []
    for at in range(0, len(prompts), batch_size):
        out += [group[0].text for group in engine.generate(prompts[at:at + batch_size], 1, sampling, seed=seed + at)]
    return out


def extract_rules(pairs: Sequence[RulePair], model, tokenizer, *, max_rules: int = 16, jaccard: float = 0.6,
                  max_new_tokens: int = 256, max_prompt_tokens: int = 1024, batch_size: int = 8,
                  seed: int = 0) -> dict[str, Any]:
    """The three stages over `pairs`: {"rules", "counts", "source": {statistics}} (see the module docstring).
    Raises a CredoError when the model's output holds no parseable rule."""
    torch.manual_seed(seed)
    settings = dict(max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens, batch_size=batch_size,
                    seed=seed)
    missing = [i for i, p in enumerate(pairs) if p.rationale is None]
    written = generate_greedy(model, tokenizer, [RATIONALE_PROMPT.format(prompt=pairs[i].prompt, chosen=pairs[i].chosen,
                                                                         rejected=pairs[i].rejected) for i in missing],
                              **settings) if missing else []
    rationales = [p.rationale for p in pairs]
    for i, text in zip(missing, written):
        rationales[i] = text
    outputs = generate_greedy(model, tokenizer, [RULES_PROMPT.format(rationale=r) for r in rationales], **settings)
    candidates = [parse_rules(text) for text in outputs]
    merged = merge_rules(candidates, max_rules=max_rules, jaccard=jaccard)
    if not merged:
        raise CredoError(f"extract-rules: the model wrote no parseable rule for any of {len(pairs)} pairs (one rule "
                         f"per line, at least {MIN_RULE_WORDS} words); try a stronger --model or give rationales")
    return {"rules": [r for r, _ in merged], "counts": {r: n for r, n in merged},
            "source": {"rows": len(pairs), "rationales_written": len(missing),
                       "candidates": sum(len(c) for c in candidates), "max_rules": max_rules, "jaccard": jaccard,
                       "seed": seed, "max_new_tokens": max_new_tokens,
                       "method": "AutoRule (arXiv 2506.15651): rationales and rules by the model (greedy), "
                                 "merged by normalised text and word-set Jaccard, ranked by support"}}


def write_json(path: str | Path, doc: dict) -> Path:
    """Atomically (a half-written rules file is never read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".rules-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_rules(spec: Any, where: str) -> list[str]:
    """A non-empty list of non-empty rule strings: inline, or the "rules" of a rules.json file."""
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise CredoError(f"{where}: rules file not found: {spec}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CredoError(f"{where}: {spec} is not a readable JSON file ({type(exc).__name__})") from None
        if not isinstance(doc, dict) or "rules" not in doc:
            raise CredoError(f"{where}: {spec} has no \"rules\" list (write it with credo extract-rules)")
        spec, where = doc["rules"], f"{where} ({spec}: \"rules\")"
    if not isinstance(spec, list) or not spec:
        raise CredoError(f"{where}: expected a rules.json path or a non-empty list of rules, got {spec!r:.60}")
    for i, rule in enumerate(spec):
        if not isinstance(rule, str) or not rule.strip():
            raise CredoError(f"{where}[{i}]: a rule must be a non-empty string, got {rule!r:.60}")
    return [r.strip() for r in spec]


# --- the reward term -----------------------------------------------------------------------------------

def rule_fraction(q: torch.Tensor, *, threshold: float = 0.5, soft: bool = False) -> torch.Tensor:
    """AutoRule's r_i = (1 / K) sum_k 1[q_ik >= threshold], or with soft the mean q_ik.

    q [B, K] float in [0, 1] (K >= 1) -> [B] float32. A NaN verdict counts as not satisfied (hard).

    >>> rule_fraction(torch.tensor([[0.9, 0.2, 0.5, 0.4]])).tolist(), rule_fraction(torch.tensor([[0.9, 0.3]]), soft=True).tolist()
    ([0.5], [0.6000000238418579])
    """
    q = q.float()
    return q.mean(-1) if soft else (q >= threshold).float().mean(-1)


class AutoRuleReward:
    """The `autorule` term (see the module docstring). Parameters (rl.reward_term_params["autorule"]):

    rules: a rules.json path (credo extract-rules) or an inline list of rules (required);
    judge: "smollm2" (default), "tiny" or a model folder, asked through LLMJudge's "rule" template (from
    Python: any object with yes_probability(template, fields)); threshold: q at which a rule counts as
    followed (0.5); soft: the mean q instead (false); batch_size: judge rows per forward pass (16);
    max_tokens: judge query window, oldest text dropped first (1024); cache_size: (completion, rule)
    verdicts kept and checkpointed (16384; 0 = none).
    """

    def __init__(self, *, rules: Any = None, judge: Any = "smollm2", threshold: float = 0.5, soft: bool = False,
                 batch_size: int = 16, max_tokens: int = 1024, cache_size: int = 16384):
        if rules is None:
            raise CredoError(f"{field_name('autorule', 'rules')}: required (a rules.json from credo extract-rules, "
                             f"or a list of rules)")
        self.rules = load_rules(rules, field_name("autorule", "rules"))
        if not callable(getattr(judge, "yes_probability", None)):
            check_model_name(judge, field_name("autorule", "judge"))
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise CredoError(f"{field_name('autorule', 'threshold')}: expected a number in [0, 1], got {threshold!r}")
        if not isinstance(soft, bool):
            raise CredoError(f"{field_name('autorule', 'soft')}: expected true or false, got {soft!r}")
        self.judge_spec, self.threshold, self.soft = judge, float(threshold), soft
        self.batch_size = positive_int(batch_size, field_name("autorule", "batch_size"))
        self.max_tokens = positive_int(max_tokens, field_name("autorule", "max_tokens"), lo=8)
        self.cache = ScoreCache(positive_int(cache_size, field_name("autorule", "cache_size"), lo=0))
        self._judge = judge if callable(getattr(judge, "yes_probability", None)) else None
        self.judge_calls = 0  # (completion, rule) verdicts asked of the judge (cache misses)
        self.cache_hits = 0

    @property
    def judge(self):
        """The judge, loaded once at first use (an LLMJudge without its own cache: this term caches)."""
        if self._judge is None:
            from credo.judges.llm import LLMJudge

            model, tokenizer = load_frozen(self.judge_spec)
            self._judge = LLMJudge(model, tokenizer, low=0.0, high=1.0, batch_size=self.batch_size,
                                   cache_size=0, max_tokens=self.max_tokens)
        return self._judge

    def verdicts(self, prompts: Sequence[str], texts: Sequence[str]) -> torch.Tensor:
        """q [B, K]: the judge's p(Yes) for every (completion, rule), misses asked in one call."""
        cells = [(str(p), str(t), rule) for p, t in zip(prompts, texts) for rule in self.rules]
        keys = [ScoreCache.key(*c) for c in cells]
        values: dict[str, float] = {}
        todo: dict[str, tuple[str, str, str]] = {}
        for key, cell in zip(keys, cells):
            hit = self.cache.get(key)
            if hit is not None:
                values[key] = hit
                self.cache_hits += 1
            elif key not in todo:
                todo[key] = cell
        if todo:
            fields = [{"prompt": p, "response": t, "rule": r} for p, t, r in todo.values()]
            q = [float(x) for x in self.judge.yes_probability("rule", fields)]
            if len(q) != len(fields):
                raise ValueError(f"the judge returned {len(q)} verdicts for {len(fields)} queries")
            self.judge_calls += len(fields)
            for key, value in zip(todo, q):
                values[key] = value
                self.cache.put(key, value)
        return torch.tensor([values[k] for k in keys], dtype=torch.float32).reshape(len(texts), len(self.rules))

    def __call__(self, inputs) -> list[float]:
        if inputs.prompts is None:
            raise ValueError("the autorule term needs the prompts (TermInputs.prompts)")
        if not len(inputs.texts):
            return []
        q = self.verdicts(inputs.prompts, inputs.texts)
        return rule_fraction(q, threshold=self.threshold, soft=self.soft).tolist()

    def state(self) -> dict[str, Any]:
        return {"cache": self.cache.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.cache.load_state(state["cache"])


# --- `credo extract-rules` ---------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("extract-rules", help="AutoRule: rules from preference pairs, for the autorule reward term",
                       description="Stage 1: rationales (unless the rows have them); stage 2: rules from each "
                                   "rationale; stage 3: merge and rank (credo/rewards/autorule.py).")
    p.add_argument("--pairs", required=True, help="pairs file: JSONL / Parquet / CSV rows {prompt, chosen, rejected, "
                                                  "rationale?} or a datasets folder")
    p.add_argument("--model", default="smollm2", help="the model that writes rationales and rules: smollm2, tiny "
                                                      "or a model folder")
    p.add_argument("--out", required=True, help="the rules.json to write")
    p.add_argument("--max-rules", type=int, default=16, help="rules kept after merging (most supported first)")
    p.add_argument("--jaccard", type=float, default=0.6, help="word-set similarity at which two rules merge")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per rationale and per rule list")
    p.add_argument("--max-prompt-tokens", type=int, default=1024, help="longer prompts keep their last tokens")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_extract_rules)


def cmd_extract_rules(args, rest) -> int:
    if rest:
        raise CredoError(f"extract-rules: unknown arguments {' '.join(rest)}")
    for name in ("max_rules", "max_new_tokens", "max_prompt_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise CredoError(f"extract-rules: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not (math.isfinite(args.jaccard) and 0.0 < args.jaccard <= 1.0):
        raise CredoError(f"extract-rules: --jaccard must be in (0, 1], got {args.jaccard}")
    check_model_name(args.model, "extract-rules: --model")
    pairs = read_rule_pairs(args.pairs)  # (every row checked before the model loads)
    from credo.models import load_policy

    policy = load_policy(args.model, seed=args.seed)
    doc = extract_rules(pairs, policy.model.eval(), policy.tokenizer, max_rules=args.max_rules, jaccard=args.jaccard,
                        max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                        batch_size=args.batch_size, seed=args.seed)
    doc["source"] = {"pairs": str(args.pairs), "model": policy.source, **doc["source"]}
    out = write_json(args.out, doc)
    print(f"credo: {len(doc['rules'])} rules from {len(pairs)} pairs ({doc['source']['candidates']} candidates) "
          f"written to {out}; use them with rl.reward_terms {{\"autorule\" = 1.0}} and "
          f"rl.reward_term_params {{\"autorule\" = {{\"rules\" = \"{out}\"}}}}")
    return 0


CATALOG = [
    Entry("autorule", "fraction of extracted rules a judge says the completion follows (yes/no log-probs, threshold "
          "or soft); rules from preference pairs by `credo extract-rules`",
          "AutoRule: Reasoning Chain-of-thought Extracted Rule-based Rewards Improve Preference Learning "
          "(arXiv 2506.15651)", "reconstructed", "a rules.json (credo extract-rules) and a judge model folder "
          "(default smollm2)",
          training="works (rule merging is deterministic clustering, not the paper's LLM merge)"),
]
