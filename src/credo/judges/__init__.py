"""Judges and reward models behind one interface (`StepJudge.score(prompt, steps, truth)`), chosen by
`rl.judge`:

| rl.judge          | judge                                                                     |
|-------------------|---------------------------------------------------------------------------|
| "synthetic"       | `SyntheticJudge`: the task's true step score + rl.judge_noise/bias/flip    |
| "llm"             | `LLMJudge` on the bundled SmolLM2 (yes/no logprobs, `judges/llm.py`)        |
| "llm:<folder>"    | `LLMJudge` on any local Hugging Face causal LM folder                       |
| "prm:<folder>"    | `PRMJudge` on a process reward model trained by `credo train-prm`           |

Judges that can score many rows at once expose `score_many([(prompt, steps), ...])`; the trainer
uses it when present (one batched pass per training step).
"""

from __future__ import annotations

from credo.errors import CredoError
from credo.judges.synthetic import StepJudge, SyntheticJudge

JUDGE_KINDS = ("synthetic", "llm", "llm:<folder>", "prm:<folder>")


def check_judge_spec(spec: str) -> None:
    """Raise a CredoError naming rl.judge when `spec` is not one of JUDGE_KINDS (no model loaded)."""
    if spec in ("synthetic", "llm"):
        return
    kind, _, folder = spec.partition(":")
    if kind in ("llm", "prm") and folder:
        return
    raise CredoError(f"rl.judge: unknown judge {spec!r}; valid: {', '.join(JUDGE_KINDS)}")


def make_judge(spec: str, *, seed: int = 0, noise: float = 0.0, bias: float = 0.0, flip: float = 0.0,
               device=None) -> StepJudge:
    """The judge named by `spec` (see the module docstring); models load on `device` (default CPU)."""
    check_judge_spec(spec)
    if spec == "synthetic":
        return SyntheticJudge(noise=noise, bias=bias, flip=flip, seed=seed)
    kind, _, folder = spec.partition(":")
    if kind == "llm":
        from credo.judges.llm import LLMJudge
        from credo.models import load_policy

        policy = load_policy(folder or "smollm2")
        model = policy.model if device is None else policy.model.to(device)
        return LLMJudge(model, policy.tokenizer)
    from credo.judges.prm import PRMJudge, ProcessRewardModel

    prm = ProcessRewardModel.load(folder)
    return PRMJudge(prm if device is None else prm.to(device))


__all__ = ["JUDGE_KINDS", "StepJudge", "SyntheticJudge", "check_judge_spec", "make_judge"]
