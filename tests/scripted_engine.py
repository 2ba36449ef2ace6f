"""A rollout engine fake for sampler tests: call d answers with the scripted texts of depth d."""

from credo.rollout.base import Completion


class ScriptEngine:
    """Answers call d with the first n scripted candidate texts of depth d for every prompt (finish
    "stop", logprob -0.5 per token); records (prompts, n, params, seed) of each call in `calls`."""

    def __init__(self, tok, script):
        self.tok, self.script, self.calls = tok, script, []

    def generate(self, prompts, n, params, seed=0):
        self.calls.append(([list(p) for p in prompts], n, params, seed))
        texts = self.script[len(self.calls) - 1]
        out = []
        for p in prompts:
            group = []
            for t in texts[:n]:
                ids = self.tok.encode(t, add_special_tokens=False)
                group.append(Completion(list(p), ids, [-0.5] * len(ids), [True] * len(ids), "stop", t))
            out.append(group)
        return out
