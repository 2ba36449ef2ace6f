"""Topic classification of short synthetic sentences: "The chef baked the bread." -> "<answer>food</answer>".

A built-in classification task for GenCLS++'s reward (`rewards/gencls.py`, the `gencls` term), generated
from templates over four topics (labels in this order): sports, food, weather, music.

| level | sentences                                                          | distinct   |
|-------|--------------------------------------------------------------------|------------|
| 1     | three cues of the topic: "The drummer rehearsed the concert."      | 864        |
| 2     | one cue in a neutral sentence: "A friend said the storm was long." | 864        |
| 3     | two cues and a distractor cue of another topic: "Though she        | 15,552     |
|       | thought of the soup, the striker won the final."                   |            |

Options (GenCLS++'s strategy dimensions): `numeric_labels` (the prompt offers the numbers 1-4 instead
of the names, and the answer is the number: semantically irrelevant labels, learned in the warm-up)
and `uncertain_label` (an extra answer, e.g. "uncertain", that is well formatted but never right).

Score: the label matcher of `rewards/gencls.py` (the answer tag's content or the first line, normalised
for case, whitespace and punctuation): reward 1.0 for the gold label; `formatted` when the answer is in
the label set. Splits by a stable hash of the sentence, like the other generators.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from credo.errors import CredoError
from credo.rewards.gencls import LabelSet, UNCERTAIN, classification_reward
from credo.tasks.base import Example, Score, draw_examples

LABELS = ("sports", "food", "weather", "music")

# Per topic: (who, what they did, what) - every word a cue of its topic and of no other.
_CUES = {
    "sports": (("striker", "goalkeeper", "coach", "referee", "sprinter", "team captain"),
               ("won", "lost", "trained for", "played in", "scored in", "watched"),
               ("match", "final", "tournament", "race", "league game", "penalty shootout")),
    "food": (("chef", "baker", "waiter", "cook", "pastry chef", "grocer"),
             ("cooked", "tasted", "baked", "served", "seasoned", "ordered"),
             ("soup", "omelette", "curry", "bread", "pasta", "dessert")),
    "weather": (("forecaster", "meteorologist", "storm chaser", "weather pilot", "sailor", "farmer"),
                ("predicted", "tracked", "warned about", "measured", "reported", "sheltered from"),
                ("storm", "heatwave", "fog", "snowfall", "thunderstorm", "drizzle")),
    "music": (("drummer", "singer", "pianist", "violinist", "conductor", "guitarist"),
              ("performed", "recorded", "composed", "rehearsed", "sang in", "tuned up for"),
              ("concert", "symphony", "album", "chorus", "melody", "rehearsal")),
}
_PEOPLE = ("My neighbour", "A friend", "The teacher", "Someone at work", "Her cousin", "The old man")
_TAILS = ("was unforgettable", "happened on Tuesday", "took longer than expected", "surprised everyone",
          "was on the news", "is all anyone talks about")
_LEVELS = (1, 2, 3)


@dataclass
class ClassifyTask:
    difficulty: int = 1
    numeric_labels: bool = False
    uncertain_label: str | None = None
    system_prompt: str | None = "Reply only with the label as <answer>...</answer>."
    name: str = "classify"

    def __post_init__(self):
        if self.difficulty not in _LEVELS:
            raise CredoError(f"classify: unknown difficulty {self.difficulty!r}; valid levels: {list(_LEVELS)}")
        self.labels = LabelSet.of(LABELS, self.numeric_labels, self.uncertain_label, "task.params")

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        """(topic, sentence) of this level."""
        topic = rng.choice(LABELS)
        who, did, what = (rng.choice(options) for options in _CUES[topic])
        if self.difficulty == 1:
            return topic, f"The {who} {did} the {what}."
        if self.difficulty == 2:
            return topic, f"{rng.choice(_PEOPLE)} said the {what} {rng.choice(_TAILS)}."
        other = rng.choice([t for t in LABELS if t != topic])
        return topic, f"Though she thought of the {rng.choice(_CUES[other][2])}, the {who} {did} the {what}."

    def _answer(self, topic: str) -> str:
        return str(LABELS.index(topic) + 1) if self.numeric_labels else topic

    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        options = ", ".join(self.labels.shown())
        meta = {"level": self.difficulty, "labels": list(LABELS), "numeric_labels": self.numeric_labels,
                "uncertain_label": self.uncertain_label}

        def make(problem: tuple[str, str]) -> Example:
            topic, sentence = problem
            answer = self._answer(topic)
            return Example(f"Classify the topic of the sentence as one of: {options}.\nSentence: {sentence}",
                           answer, f"<answer>{answer}</answer>", dict(meta, topic=topic))

        rng = random.Random(f"{self.name}:{self.difficulty}:{split}:{seed}")
        return draw_examples(f"classify difficulty {self.difficulty}", split, n, rng, self._draw,
                             lambda p: p[1], make, noun="sentences")

    def score(self, completion: str, example: Example) -> Score:
        reward, formatted = classification_reward(completion, example.answer, self.labels)
        return Score(reward=reward, correct=reward > 0, formatted=formatted)

    def final_answer(self, completion: str, example: Example) -> str | None:
        """The predicted label's name (the uncertainty label included) for majority voting, None when
        the answer is not in the label set."""
        got = self.labels.predicted(completion)
        if got is None:
            return None
        return self.uncertain_label if got == UNCERTAIN else LABELS[got]
