"""Sample- and token-level selection: rules as pure functions that return boolean keep-masks, and
DAPO's dynamic-sampling refill loop built on its rule (`rl.dynamic_sampling`)."""

from credo.select.dynamic_sampling import (DynamicSampling, keep_mixed_groups, keep_mixed_groups_loop,
                                          refill_mixed_groups)

__all__ = ["DynamicSampling", "keep_mixed_groups", "keep_mixed_groups_loop", "refill_mixed_groups"]
