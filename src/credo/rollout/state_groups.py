"""VPR's state-group rollout: K candidate actions branched from every visited state of a multi-turn episode.

`rollout.sampler = "vpr"` (multi-turn tasks only). For each prompt ONE episode is advanced; at each
visited state s_d (d = 0 .. turns-1: the prompt and the committed actions and observations so far),
the engine samples K candidate actions from s_d in one call for all live episodes. Every candidate
is stepped from s_d on the task's environment (states are values, so a candidate's step does not
move the episode) and scored by the oracle: the task's `turn_truth` of the state it leads to
(keyvalue: 1 useful call or correct answer, 0 useless, -1 malformed; `oracle = "reward"` takes the
environment's turn reward instead). One candidate of maximal oracle score, chosen uniformly by a
seeded draw, is committed: its action and the environment's observation extend the episode.

Rows: each candidate is one `Completion` of the group, whose tokens are the committed history
(untrainable, logprob 0 for observations, the sampler's for actions) followed by the candidate
action (trainable). Its meta is a one-turn multi-turn row, so the turn-level credit path reads it
unchanged: "turn_spans" [the candidate's span], "turn_rewards" [its oracle score] (the environment's
turn reward is kept as "turn_env_rewards"), "turn_keys" [the state's observation history, shared by
its K siblings], "turn_truth", "turn_texts", "vpr_state" d, "vpr_candidate" j, "vpr_committed".
A group holds candidates x turns rows; an episode that ends before `turns` states fills the rest
with untrainable copies (`meta["vpr_duplicate"]`), which the loss skips. The `vpr` estimator then
gives each candidate its oracle score minus its state group's mean, whitened over the batch, and
masks states whose K candidates all scored alike (`credit/turns.py::vpr_train_mask`).

Paper: "VPR: Verifiable Process Rewards" (arXiv 2605.10325), state-group rollout; defaults K = 4
candidates per state. Status: reconstructed from the paper and the official repository's
description (thu-nics/VPR: commit one uniformly chosen max-reward candidate, train on all
informative candidates); the oracle here is the task's turn truth (the paper's are game solvers:
BFS shortest paths for Sokoban, forced / MRV moves for Sudoku, mine posteriors for Minesweeper).
Committing the best candidate moves the visited states away from on-policy, as in the paper.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from credo.entry import Entry
from credo.errors import CredoError
from credo.rollout.base import Completion, SamplingParams
from credo.rollout.multiturn import MultiTurnTask, _Trajectory, env_step, turn_seed
from credo.rollout.weights import request_seed
from credo.tasks.base import Example

ORACLES = ("truth", "reward")


class VPRSampler:
    """VPR's state-group sampler (see the module docstring)."""

    multiturn = True  # drawn through generate_multiturn, not generate (train/evaluate.py::generate_groups)

    def __init__(self, *, candidates: int = 4, turns: int = 4, oracle: str = "truth", seed_offset: int = 0):
        for name, value in (("candidates", candidates), ("turns", turns)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CredoError(f"rollout.sampler_params: vpr {name} must be an integer >= 1, got {value!r}")
        if oracle not in ORACLES:
            raise CredoError(f"rollout.sampler_params: vpr oracle must be one of {ORACLES}, got {oracle!r}")
        self.candidates, self.turns, self.oracle, self.seed_offset = candidates, turns, oracle, int(seed_offset)

    @property
    def group_size(self) -> int:
        return self.candidates * self.turns

    def check(self, group_size: int, max_new_tokens: int) -> None:
        if self.group_size != group_size:
            raise CredoError(f"rollout.sampler vpr: candidates x turns = {self.group_size} rows per prompt, but "
                             f"rl.group_size is {group_size}; make them equal")

    def generate(self, *args, **kwargs):
        raise CredoError("rollout.sampler vpr branches the states of a multi-turn episode: it needs a multi-turn "
                         "task (one with reset / step, e.g. keyvalue)")

    def generate_multiturn(self, engine, tokenizer, task: MultiTurnTask, examples: Sequence[Example],
                           prompts: Sequence[Sequence[int]], n: int, sampling: SamplingParams, seed: int, *,
                           max_context_tokens: int | None = None) -> list[list[Completion]]:
        """n = candidates x turns rows per prompt: groups[p] holds the candidates of prompt p's states in order."""
        self.check(n, sampling.max_new_tokens)
        turns = min(self.turns, task.max_turns)
        per_turn = dataclasses.replace(sampling, stop=tuple(dict.fromkeys(tuple(sampling.stop) + tuple(task.turn_stop))))
        budget, new = max_context_tokens, sampling.max_new_tokens
        # the committed episode of each prompt (the driver's trajectory; its actions are only ever history here)
        episodes = [_Trajectory(list(prompt), task.reset(ex)) for ex, prompt in zip(examples, prompts)]
        for ep in episodes:
            ep.live = ep.room(0, budget, new)
        groups: list[list[Completion]] = [[] for _ in prompts]
        for d in range(turns):
            alive = [p for p, ep in enumerate(episodes) if ep.live]
            if not alive:
                break
            out = engine.generate([episodes[p].prompt_ids + episodes[p].tokens for p in alive], self.candidates,
                                  per_turn, seed=turn_seed(seed, d))
            rng = random.Random(request_seed(seed + self.seed_offset, 2000 + d))
            for p, cands in zip(alive, out):
                ep, start = episodes[p], len(episodes[p].tokens)
                stepped = [env_step(task, ep.state, c.text) for c in cands]  # (obs, reward, state, truth, error)
                scores = [truth if self.oracle == "truth" else reward for _, reward, _, truth, _ in stepped]
                chosen = rng.choice([j for j, score in enumerate(scores) if score == max(scores)])
                for j, (c, (observation, reward, _, truth, error)) in enumerate(zip(cands, stepped)):
                    groups[p].append(Completion(
                        prompt_ids=list(ep.prompt_ids), token_ids=ep.tokens + list(c.token_ids),
                        logprobs=ep.logprobs + list(c.logprobs), trainable=[False] * start + list(c.trainable),
                        finish_reason=c.finish_reason, text="".join(ep.parts) + c.text,
                        meta={"turn_spans": [(start, start + len(c.token_ids))], "turn_rewards": [scores[j]],
                              "turn_env_rewards": [reward], "turn_keys": [tuple(ep.observations)],
                              "turn_truth": [truth], "turn_texts": [c.text], "turns": 1,
                              "end": "env" if observation is None else "vpr_branch", "env_errors": error,
                              "vpr_state": d, "vpr_candidate": j, "vpr_committed": j == chosen},
                        weight_version=c.weight_version))
                observation, _, after, _, _ = stepped[chosen]
                if observation is None or d == turns - 1:
                    ep.live = False
                    continue
                c = cands[chosen]
                ep.state = after
                ep.tokens += list(c.token_ids)
                ep.logprobs += list(c.logprobs)
                ep.trainable += [False] * len(c.token_ids)
                ep.parts.append(c.text)
                ids = list(tokenizer(observation, add_special_tokens=False)["input_ids"])
                if not ep.room(len(ids), budget, new):
                    ep.live = False
                    continue
                ep.observe(observation, ids)
        for group in groups:  # an episode that ended early: untrainable copies keep n rows
            last = group[-self.candidates:]
            while len(group) < n:
                c = last[len(group) % len(last)]
                group.append(dataclasses.replace(c, trainable=[False] * len(c.token_ids),
                                                 meta={**c.meta, "vpr_duplicate": True, "vpr_committed": False}))
        return groups


VPR_CATALOG = [
    Entry("vpr", "VPR's state-group rollout: candidates (4) actions branched from every visited state of a "
          "multi-turn episode, scored by the task's oracle (turn truth), one max-score candidate committed",
          "VPR: Verifiable Process Rewards (arXiv 2605.10325)", "reconstructed",
          "a multi-turn task; rollout.sampler_params; rl.group_size = candidates x turns"),
]
