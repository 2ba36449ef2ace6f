"""Sampled held-out evaluation: pass@k, maj@k and mean@k from K samples per prompt.

Next to greedy accuracy (`evaluate.py::evaluate`), K completions of every held-out prompt are sampled
(one engine call per chunk of prompts, `generate(prompts, n=K)`: each prompt is prefilled once and its
KV cache repeated for the K samples) and scored by the task's verifier. Per prompt, with c of the n = K
samples correct:

- pass@k: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", arXiv 2107.03374), 1 - C(n - c, k) / C(n, k), the probability that at least one of k samples
  drawn without replacement from the n is correct; computed as the product 1 - prod_{i=n-c+1}^{n}
  (1 - k / i), which never forms the huge binomials.
- maj@k: majority vote over the final answers (`tasks.base.final_answer`) of k samples. The n samples
  are cut into floor(n / k) consecutive blocks of k; each block votes, and maj@k is the mean
  correctness of the blocks' votes (maj@K is one vote over all samples; smaller k use every sample
  instead of only the first k). Samples without an answer abstain; a block where nobody answers is
  wrong. Ties between equally frequent answers go to the answer whose first sample comes earliest in
  sample order (deterministic for a fixed seed). The vote is right when the verifier scored the first
  sample carrying the winning answer as correct (for a task whose final answers are canonical, every
  sample carrying an answer gets the same verdict).
- mean@k: mean accuracy over the samples, reported for k = K (it is the same for every k, and equals
  the unbiased pass@1 = c / n).

Every metric is averaged over the prompts; prompts too long for the model's context are not
generated for and count as wrong (as in greedy accuracy). The k values reported are 1, K and the
powers of two between (`report_ks`).
"""

from __future__ import annotations

import math
from typing import Sequence

from credo.errors import CredoError
from credo.rollout.base import RolloutEngine, SamplingParams
from credo.tasks.base import Example, Task, final_answer
from credo.train.evaluate import encode_prompts, generate_groups, safe_score, too_long


def report_ks(samples: int) -> list[int]:
    """The k values reported for K samples: 1, the powers of two below K, and K.

    >>> report_ks(8), report_ks(6), report_ks(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k).

    Stable form (Chen et al. 2021, arXiv 2107.03374): 1 - prod_{i = n-c+1}^{n} (1 - k / i); exactly 1
    when fewer than k samples are wrong.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), pass_at_k(4, 3, 2)
    (0.25, 0.5, 1.0)
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample that represents the majority answer, or None when no sample answers.

    None answers abstain. Among the most frequent answers, the one whose first sample comes earliest
    wins; the returned index is that first sample.

    >>> majority_vote(["7", "8", "8", None, "7"])  # 7 and 8 tie at two votes: 7 appeared first
    0
    >>> majority_vote([None, "3", "5", "5"])
    2
    >>> majority_vote([None, None]) is None
    True
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not counts:
        return None
    best = max(counts.values())
    return min(first[a] for a, c in counts.items() if c == best)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one prompt: the mean correctness of the majority votes of its floor(n / k) blocks of k
    consecutive samples (answers[i], correct[i]: sample i's final answer and verdict)."""
    n = len(answers)
    if not 1 <= k <= n or len(correct) != n:
        raise ValueError(f"maj_at_k needs 1 <= k <= n = len(answers) = len(correct); got k={k}, "
                         f"{n} answers, {len(correct)} verdicts")
    blocks = n // k
    wins = 0
    for b in range(blocks):
        winner = majority_vote(answers[b * k: (b + 1) * k])
        wins += winner is not None and bool(correct[b * k + winner])
    return wins / blocks


def sampled_metrics(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
                    samples: int, total: int | None = None) -> dict[str, float]:
    """pass@k, maj@k (k > 1) and mean@K averaged over prompts.

    answers[p][i] / correct[p][i]: final answer and verdict of sample i of generated prompt p (each
    with `samples` entries); total: the number of prompts in the evaluation (default: those given),
    the ones not generated for (too long) count as wrong."""
    total = len(answers) if total is None else total
    denom = max(1, total)
    out: dict[str, float] = {}
    for k in report_ks(samples):
        out[f"pass@{k}"] = sum(pass_at_k(samples, sum(map(bool, c)), k) for c in correct) / denom
    for k in report_ks(samples)[1:]:  # maj@1 is one sample's verdict: pass@1
        out[f"maj@{k}"] = sum(maj_at_k(a, c, k) for a, c in zip(answers, correct)) / denom
    out[f"mean@{samples}"] = sum(sum(map(bool, c)) / samples for c in correct) / denom
    return out


def format_sampled(result: dict) -> str:
    """", pass@1 41.0%, pass@8 77.0%, maj@8 52.0%" from a result holding sampled metrics; "" if none.

    >>> format_sampled({"samples": 4, "pass@1": 0.5, "pass@2": 0.6, "pass@4": 0.75, "maj@4": 0.5})
    ', pass@1 50.0%, pass@4 75.0%, maj@4 50.0%'
    """
    k = result.get("samples")
    if not k:
        return ""
    keys = dict.fromkeys(["pass@1", f"pass@{k}", f"maj@{k}"])  # (K = 1: pass@1 once, no maj)
    return "".join(f", {key} {result[key]:.1%}" for key in keys if key in result)


def add_eval_arguments(parser) -> None:
    """`credo eval`'s sampled-evaluation flags (kept here, next to what they drive)."""
    parser.add_argument("--samples", type=int, default=None, metavar="K",
                        help="also sample K completions per prompt and report pass@k, maj@k, mean@K "
                             "(k = 1, K and the powers of two between)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature of --samples (default 1.0; top-p / top-k from "
                             "--sampling.top_p / --sampling.top_k)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --samples draws")


def check_sampled_args(samples: int | None, temperature: float | None) -> float:
    """The sampling temperature of `--samples` (default 1.0); CredoError (one line) for a bad
    --samples / --temperature."""
    if samples is None:
        if temperature is not None:
            raise CredoError("--temperature applies to sampled evaluation only: add --samples K")
        return 1.0
    if samples < 1:
        raise CredoError(f"--samples must be at least 1 (completions per prompt), got {samples}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise CredoError(f"--temperature must be a finite number > 0 for --samples, got {temperature}")
    return 1.0 if temperature is None else temperature


def evaluate_sampled(
    engine: RolloutEngine,
    tokenizer,
    task: Task,
    examples: Sequence[Example],
    sampling: SamplingParams,
    *,
    samples: int,
    batch_size: int = 100,
    seed: int = 0,
    max_prompt_tokens: int | None = None,
) -> dict[str, float]:
    """Sampled metrics on `examples` with `samples` completions per prompt under `sampling`.

    Each engine call holds about `batch_size` completions: batch_size // samples prompts (at least
    one), each prefilled once and sampled `samples` times. Returns the metrics of `sampled_metrics`,
    plus samples, the sampling temperature, and the format rate and mean length of the samples."""
    if samples < 1:
        raise CredoError(f"sampled evaluation needs at least 1 sample per prompt, got {samples}")
    per_call = max(1, batch_size // samples)
    answers: list[list[str | None]] = []
    correct: list[list[bool]] = []
    formatted = tokens = generated = 0
    for start in range(0, len(examples), per_call):
        chunk = examples[start: start + per_call]
        prompts = encode_prompts(tokenizer, task, chunk)
        drop = set(too_long(prompts, max_prompt_tokens))
        chunk = [ex for i, ex in enumerate(chunk) if i not in drop]
        prompts = [p for i, p in enumerate(prompts) if i not in drop]
        groups = generate_groups(engine, tokenizer, task, chunk, prompts, samples, sampling,
                                 seed * 1_000_003 + start, max_prompt_tokens)
        for ex, group in zip(chunk, groups):
            verdicts, finals = [], []
            for completion in group:
                score, _ = safe_score(task, completion.text, ex)
                verdicts.append(score.correct)
                finals.append(final_answer(task, completion.text, ex))
                formatted += score.formatted
                tokens += len(completion.token_ids)
                generated += 1
            correct.append(verdicts)
            answers.append(finals)
    metrics = sampled_metrics(answers, correct, samples, total=len(examples))
    return {"samples": samples, "sample_temperature": sampling.temperature, **metrics,
            "sampled_format_rate": formatted / max(1, generated),
            "sampled_response_length": tokens / max(1, generated)}
