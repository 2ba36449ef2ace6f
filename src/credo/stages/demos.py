"""The `demos` stage: demonstrations written by a model folder (a teacher) and kept only when the task's
verifier accepts them, for a later supervised stage (`warmup.demonstrations = "@<this stage>"`).

This is how "Warm Up Before You Train: Unlocking General Reasoning in Resource-Constrained Settings"
(arXiv 2505.13718) builds its warm-up data: a strong reasoner (the paper: QwQ-32B) writes long chains of
thought on Knights-and-Knaves puzzles, and the student is fine-tuned on them before RLVR on another task.
The filter is rejection sampling on the task's verifier (as in STaR, arXiv 2203.14465, and RFT, arXiv
2308.01825): for each of `prompts` training problems the stage's model samples `samples` completions
(temperature `sampling.temperature`, budget `sampling.max_new_tokens`), and the first one the task scores
correct becomes that problem's demonstration; problems with none are dropped (`keep_unsolved = false`) or
keep the task's own demonstration (`true`).

The writing model is the stage's `model.name` (a teacher folder, the bundled model, or by default in a
pipeline the previous stage's model); it is not trained. Outputs in the run folder:
- `demonstrations.jsonl`: one row per kept problem, {"prompt", "answer", "demonstration", "source"}
  ("teacher" or "task"), the format `warmup.demonstrations` reads;
- metrics.jsonl: one "demos" row (problems, samples, solved fraction, kept rows, mean demonstration
  characters) and the held-out evaluation of the writing model (greedy, summary["final"]: the teacher's
  row in a pipeline's table). No checkpoints: the model is unchanged, so a stage chained after this one
  starts from this stage's `model.name` (stages/pipeline.py).

The draw is seeded by (run.seed, the stage), so a rerun writes the same file; `--resume` of an unfinished
stage redoes it (the file is written whole, to a temporary name then renamed, so a kill never leaves half
a file behind).

Defaults: prompts 64, samples 4, keep_unsolved false. Training prompts come from the task's train split
with seed run.seed + 10_000, the same draw as the warm-up's (train/run.py::warmup_stage).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from typing import Any

from credo.entry import Entry
from credo.errors import CredoError
from credo.stages.base import StageKind, register_stage

FILE = "demonstrations.jsonl"


@dataclass
class DemosParams:
    prompts: int = 64  # training problems to write demonstrations for
    samples: int = 4  # completions sampled per problem; the first correct one is kept
    keep_unsolved: bool = False  # a problem with no correct sample keeps the task's own demonstration

    def __post_init__(self):
        if self.prompts < 1 or self.samples < 1:
            raise CredoError(f"demos: prompts and samples must be >= 1, got prompts={self.prompts}, "
                             f"samples={self.samples}")


def first_correct(task, example, texts: list[str]) -> str | None:
    """The first completion the task scores correct, or None (scoring never raises on model output)."""
    from credo.train.evaluate import safe_score

    for text in texts:
        score, _ = safe_score(task, text, example)
        if score.correct:
            return text
    return None


def run_demos(cfg, params: DemosParams, *, resume: bool = False) -> dict[str, Any]:
    from credo.stages.common import open_stage
    from credo.train.evaluate import encode_prompts, too_long
    from credo.train.rl import step_seed
    from credo.train.run import max_prompt_tokens

    st = open_stage(cfg, "demos", params, resume=resume)
    examples = st.task.examples("train", params.prompts, seed=cfg.run.seed + 10_000)
    prompts = encode_prompts(st.tokenizer, st.task, examples)
    drop = set(too_long(prompts, max_prompt_tokens(st.model, st.sampling, st.engine)))
    kept_examples = [e for i, e in enumerate(examples) if i not in drop]
    st.model.eval()
    st.engine.load_weights(st.model, version=0)
    groups = st.engine.generate([p for i, p in enumerate(prompts) if i not in drop], params.samples, st.sampling,
                                seed=step_seed(cfg.run.seed, 700_000))
    rows, solved = [], 0
    for example, group in zip(kept_examples, groups):
        text = first_correct(st.task, example, [c.text for c in group])
        solved += text is not None
        if text is None and not params.keep_unsolved:
            continue
        rows.append({"prompt": example.prompt, "answer": example.answer,
                     "demonstration": example.demonstration if text is None else text,
                     "source": "task" if text is None else "teacher"})
    if not rows:
        raise CredoError(f"demos: the model {cfg.model.name!r} solved none of {len(kept_examples)} training problems "
                         f"in {params.samples} samples each; raise samples or sampling.max_new_tokens, or set "
                         f"keep_unsolved = true")
    path = st.run_dir / FILE
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    record = {"phase": "demos", "step": 0, "problems": float(len(kept_examples)),
              "skipped_prompts": float(len(drop)), "samples": float(params.samples),
              "solved_fraction": solved / max(len(kept_examples), 1), "rows": float(len(rows)),
              "demonstration_chars": statistics.mean(len(r["demonstration"]) for r in rows)}
    st.writer.write(record)
    print(f"credo: demos {solved}/{len(kept_examples)} problems solved, {len(rows)} demonstrations in {path}",
          flush=True)
    st.summary["demos"] = {**record, "file": str(path)}
    st.summary["final"] = st.evaluate("final")
    return st.finish()


register_stage(StageKind("demos", DemosParams, run_demos,
                         "demonstrations written by a model (teacher), kept when the verifier accepts them"))

CATALOG = [
    Entry("demos", "rejection-sampled demonstrations from a teacher model folder for a later sft stage",
          "Warm Up Before You Train: Unlocking General Reasoning in Resource-Constrained Settings (arXiv 2505.13718)",
          "reconstructed", "a task with a verifier; the paper's teacher (QwQ-32B) is any model folder here"),
]
