"""Training stages (`credo list stages`) and pipelines of them (`credo pipeline`): see stages/base.py and
stages/pipeline.py. Importing the package registers every built-in stage kind."""

from credo.stages import demos, distill, dpo, entropy_sft, intervention, otr, train_stages  # noqa: F401  (registration)
from credo.stages.base import STAGES, StageKind, held_out_of, parse_params

__all__ = ["STAGES", "StageKind", "held_out_of", "parse_params"]
