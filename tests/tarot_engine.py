"""A scripted rollout engine for the code task's graded suites (tests/test_tarot.py): every prompt gets
the same four programs, so the tier-weighted rewards of a training run can be computed by hand.

Run as a `credo` command line with the engine swapped in (for the SIGKILL test's subprocesses):
    python -c "import sys, tarot_engine; sys.exit(tarot_engine.main(sys.argv[1:]))" train ...
"""

from __future__ import annotations

import hashlib
import json

from credo.rewards.code import extract_code
from credo.rollout.base import Completion
from credo.tasks.code import CodeTask, _example

NO_PROGRAM = "I would rather not write this function."


def failing_on(example, tier: str) -> str:
    """The reference program, except that it returns None on exactly the cases of `tier` (recognised by
    a short hash of their JSON arguments, so a long complex case does not make a long completion)."""
    marks = sorted({hashlib.md5(json.dumps(args).encode()).hexdigest()[:8]
                    for (args, _), t in zip(example.meta["cases"], example.meta["tiers"]) if t == tier})
    reference = extract_code(example.demonstration).replace("def solve(", "def _solve(", 1)
    return ("```python\nimport hashlib, json\nBAD = " + repr(marks) + "\n" + reference +
            "def solve(*args):\n    if hashlib.md5(json.dumps(list(args)).encode()).hexdigest()[:8] in BAD:\n"
            "        return None\n    return _solve(*args)\n```")


def programs(example) -> list[str]:
    """[reference, fails only the edge tier, fails only the complex tier, no program]."""
    return [example.demonstration, failing_on(example, "edge"), failing_on(example, "complex"), NO_PROGRAM]


class ScriptedCodeEngine:
    """generate(prompts, n): sample j of a prompt is programs(its example)[j % 4]; greedy evaluation (n = 1)
    therefore always answers with the reference program."""

    def __init__(self, tokenizer, cases: int = 5):
        self.tok, self.version = tokenizer, 0
        task = CodeTask(tiers=True, cases=cases)
        self.examples = [_example(f, p, cases, tiers=True) for split in ("train", "test")
                         for f, p in task.problems(split)]

    def _example_of(self, prompt_ids):
        text = self.tok.decode(list(prompt_ids))
        matches = [e for e in self.examples if e.prompt in text]
        assert len(matches) == 1, text
        return matches[0]

    def generate(self, prompts, n, sampling, seed=0):
        out = []
        for p in prompts:
            texts = programs(self._example_of(p))
            group = []
            for j in range(n):
                ids = self.tok.encode(texts[j % len(texts)], add_special_tokens=False)
                group.append(Completion(list(p), ids, [-0.5] * len(ids), [True] * len(ids), "stop",
                                        texts[j % len(texts)], weight_version=self.version))
            out.append(group)
        return out

    def load_weights(self, model, version: int = 0, **_):
        self.version = version


def patch(monkeypatch=None):
    """Swap the scripted engine in for `credo.train.run.make_engine` (with pytest's monkeypatch, or for good)."""
    import credo.train.run as run_module

    def make(cfg, model, tokenizer, *args, **kwargs):
        return ScriptedCodeEngine(tokenizer)

    if monkeypatch is not None:
        monkeypatch.setattr(run_module, "make_engine", make)
    else:
        run_module.make_engine = make


def main(argv) -> int:
    from credo.cli import main as credo_main

    patch()
    return credo_main(list(argv))
