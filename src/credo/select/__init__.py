"""Sample- and token-level selection rules: pure functions that return boolean keep-masks."""

from credo.select.dynamic_sampling import keep_mixed_groups, keep_mixed_groups_loop

__all__ = ["keep_mixed_groups", "keep_mixed_groups_loop"]
