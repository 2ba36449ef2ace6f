"""The registry of credit estimators (advantages from rewards and structure)."""

from credo.registry import Registry

CREDIT: Registry = Registry("credit estimator")
