"""The credit signal-provider layer (credit/providers.py): method-specific inputs are registered next to
their estimators, and the trainer (`src/credo/train/`) names no method."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest
import torch

from credo.credit import CREDIT
from credo.credit.base import CreditInputs, credit_needs_of, token_level
from credo.credit.providers import (extras_provider_of, provides_extras, provides_steps, step_reward_transform_of,
                                    steps_provider_of, transforms_step_rewards)
from credo.objectives import OBJECTIVES

TRAIN = Path(__file__).resolve().parents[1] / "src" / "credo" / "train"


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def test_train_package_names_no_registered_method():
    """No string literal in src/credo/train/ (docstrings aside) holds the name of a registered credit
    estimator or objective as a word: the trainer asks the estimator what it needs, never its name."""
    names = set(CREDIT.names()) | set(OBJECTIVES.names())
    assert {"capo", "f_grpo", "t_reg", "grpo", "ppo"} <= names  # the registries are really loaded
    files = sorted(TRAIN.rglob("*.py"))
    assert len(files) >= 5
    found = []
    for path in files:
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                hit = set(re.findall(r"[A-Za-z0-9_]+", node.value)) & names
                if hit:
                    found.append(f"{path.name}:{node.lineno}: {sorted(hit)} in {node.value[:60]!r}")
    assert not found, "method names in train/:\n" + "\n".join(found)


def test_the_check_would_catch_a_method_name():
    tree = ast.parse('"""mentions capo in a docstring"""\nTABLE = {"capo": 1}\nMSG = f"estimator rto needs x"\n')
    docs = _docstrings(tree)
    words = [set(re.findall(r"[A-Za-z0-9_]+", n.value)) & set(CREDIT.names()) for n in ast.walk(tree)
             if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]
    assert [sorted(w) for w in words if w] == [["capo"], ["rto"]]


def test_every_estimator_that_reads_extras_has_a_provider():
    for name in CREDIT.names():
        fn = CREDIT.get(name)
        if "extras" in credit_needs_of(fn):
            assert extras_provider_of(fn) is not None, name
            # the provider lives next to the estimator, in the method's own module
            assert extras_provider_of(fn).__module__ == fn.__module__, name


def test_providers_are_found_through_bound_parameters():
    capo = CREDIT.get("capo")
    bound = functools.partial(capo, penalty=2.0)
    assert step_reward_transform_of(bound) is step_reward_transform_of(capo) is not None
    f_grpo = functools.partial(CREDIT.get("f_grpo"), eps=1e-3)
    assert steps_provider_of(f_grpo) is not None and extras_provider_of(f_grpo) is not None
    assert extras_provider_of(CREDIT.get("grpo")) is None and steps_provider_of(CREDIT.get("pure")) is None


def test_capo_reads_the_fraction_of_wrong_votes():
    from credo.credit.process import judge_wrong_fraction

    scores = torch.tensor([[0.5, -0.5, float("nan")], [-1.0, -1.0, 1.0]])
    out = step_reward_transform_of(CREDIT.get("capo"))(scores)
    torch.testing.assert_close(out, judge_wrong_fraction(scores), equal_nan=True)


def test_a_user_estimator_registers_its_own_provider():
    @token_level(needs=("extras",))
    def mine(inputs: CreditInputs, *, scale: float = 1.0) -> torch.Tensor:
        return inputs.extras["bonus"] * scale * inputs.loss_mask

    @provides_extras(mine)
    def bonus(ctx):
        return {"bonus": torch.ones(ctx.batch.loss_mask.shape)}

    assert extras_provider_of(functools.partial(mine, scale=2.0)) is bonus
    with pytest.raises(ValueError, match="already has"):
        provides_extras(mine)(bonus)
    for decorator in (provides_steps, transforms_step_rewards):
        decorator(mine)(lambda x: x)
        with pytest.raises(ValueError, match="already has"):
            decorator(mine)(lambda x: x)
