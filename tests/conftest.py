"""Shared fixtures: the tiny random Llama (SmolLM2's tokenizer) built once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_policy():
    from credo.models import load_policy

    torch.manual_seed(0)
    return load_policy("tiny", seed=0)
