"""Named method recipes: objective + credit + reduction + the paper's other defaults in one name.

`credo train --recipe dapo` (or `rl.recipe = "dapo"` in a config file) sets every field of the
recipe; the precedence is preset -> recipe -> config file -> command-line overrides, so explicit
fields still win. `credo list recipes` prints each recipe with its paper and fields.

Choosing only an objective also gives its method: an objective whose paper pairs it with an
estimator or a reduction (`PAIRINGS`) gets that pairing for every field the user did not set
explicitly (`--rl.objective gspo` alone runs GSPO's seq_mean_token_mean reduction, not token_mean).

Clip ranges and dual clips are the objectives' own keyword defaults (each objective function
carries its paper's values), so recipes leave `rl.clip_low` / `rl.clip_high` unset unless the
recipe departs from the objective's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from credo.errors import CredoError
from credo.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """A named method: `fields` maps dotted config paths ("rl.objective") to values."""

    name: str
    paper: str
    summary: str
    fields: dict[str, Any] = field(default_factory=dict)


RECIPES: Registry[Recipe] = Registry("recipe")


def _recipe(name: str, paper: str, summary: str, **fields: Any) -> Recipe:
    recipe = Recipe(name, paper, summary, {k.replace("__", "."): v for k, v in fields.items()})
    RECIPES.register(name)(recipe)
    return recipe


_recipe("grpo", "DeepSeekMath (arXiv 2402.03300)",
        "group-normalised advantages, PPO clip 0.2, k3 KL 0.04 to the reference, sequence-mean of token means",
        rl__objective="grpo", rl__credit="grpo", rl__loss_reduction="seq_mean_token_mean",
        rl__kl_coef=0.04, rl__kl_estimator="k3")
_recipe("grpo_verl", "DeepSeekMath (arXiv 2402.03300); verl defaults",
        "GRPO as verl runs it by default: token-mean over the batch, no KL (credo's default preset)",
        rl__objective="grpo", rl__credit="grpo", rl__loss_reduction="token_mean", rl__kl_coef=0.0)
_recipe("dr_grpo", "Understanding R1-Zero-Like Training (arXiv 2503.20783)",
        "mean-centred advantages without std division, token sum / constant (max new tokens), no KL",
        rl__objective="dr_grpo", rl__credit="dr_grpo", rl__loss_reduction="seq_mean_token_sum_norm",
        rl__kl_coef=0.0)
_recipe("dapo", "DAPO (arXiv 2503.14476)",
        "clip-higher (0.2 / 0.28), dual clip 10, token-mean, no KL, dynamic sampling of mixed groups "
        "(the soft overlong punishment is length-dependent: set rl.overlong_buffer, the paper 4096 of 20480)",
        rl__objective="dapo", rl__credit="grpo", rl__loss_reduction="token_mean", rl__kl_coef=0.0,
        rl__dynamic_sampling=True)
_recipe("gspo", "Group Sequence Policy Optimization (arXiv 2507.18071)",
        "clip on the length-normalised sequence ratio (3e-4 / 4e-4), sequence-mean of token means",
        rl__objective="gspo", rl__credit="grpo", rl__loss_reduction="seq_mean_token_mean", rl__kl_coef=0.0)
_recipe("gspo_token", "Group Sequence Policy Optimization (arXiv 2507.18071)",
        "GSPO-token: sequence-ratio value with per-token gradients, sequence-mean of token means",
        rl__objective="gspo_token", rl__credit="grpo", rl__loss_reduction="seq_mean_token_mean",
        rl__kl_coef=0.0)
_recipe("sapo", "Soft Adaptive Policy Optimization (arXiv 2511.20347)",
        "sigmoid soft gate on the token ratio (tau 1.0 / 1.05), sequence-mean of token means",
        rl__objective="sapo", rl__credit="grpo", rl__loss_reduction="seq_mean_token_mean", rl__kl_coef=0.0)
_recipe("cispo", "MiniMax-M1 (arXiv 2506.13585)",
        "REINFORCE weighted by a clipped stop-gradient IS weight (clip_high 0.2), token-mean",
        rl__objective="cispo", rl__credit="grpo", rl__loss_reduction="token_mean", rl__kl_coef=0.0)
_recipe("bn_gspo", "SenseNova-MARS, BN-GSPO (arXiv 2512.24330)",
        "group then batch z-scored advantages under GSPO's sequence clip",
        rl__objective="bn_gspo", rl__credit="bn_gspo", rl__loss_reduction="seq_mean_token_mean",
        rl__kl_coef=0.0)
_recipe("f_grpo", "F-GRPO: Factorized Group-Relative Policy Optimization (arXiv 2605.12995)",
        "per-phase sequence ratios and per-phase group advantages (phases split at rl.phase_marker)",
        rl__objective="f_grpo", rl__credit="f_grpo", rl__loss_reduction="seq_mean_token_mean",
        rl__kl_coef=0.0)
_recipe("lite_ppo", "Tricks or Traps? A Deep Dive into RL for LLM Reasoning (arXiv 2508.08221)",
        "group-mean / batch-std advantages with token-level aggregation, plain PPO clip",
        rl__objective="lite_ppo", rl__credit="lite_ppo", rl__loss_reduction="token_mean", rl__kl_coef=0.0)
_recipe("ppo", "Proximal Policy Optimization Algorithms (arXiv 1707.06347); GAE (arXiv 1506.02438)",
        "actor-critic: GAE from a value head, dual-clip PPO (c = 3), clipped value loss, token-mean",
        rl__objective="ppo", rl__credit="gae", rl__loss_reduction="token_mean")
_recipe("rloo", "Back to Basics: Revisiting REINFORCE Style Optimization (arXiv 2402.14740)",
        "leave-one-out group baseline under the PPO clip, token-mean",
        rl__objective="grpo", rl__credit="rloo", rl__loss_reduction="token_mean", rl__kl_coef=0.0)
_recipe("reinforce_pp_baseline", "REINFORCE++ (arXiv 2501.03262)",
        "group mean removed, then whitened over the batch, under the PPO clip",
        rl__objective="grpo", rl__credit="reinforce_pp_baseline", rl__loss_reduction="token_mean",
        rl__kl_coef=0.0)

_recipe("hapo", "From Uniform to Heterogeneous (arXiv 2509.16591)",
        "entropy-adaptive sampling temperature (tau 0.05), token-level group advantage, entropy-adaptive "
        "clip and advantage redistribution, dual clip 10, token-mean, DAPO dynamic sampling",
        rl__objective="hapo_token", rl__credit="hapo", rl__loss_reduction="token_mean", rl__kl_coef=0.0,
        rl__dynamic_sampling=True, rollout__temperature_schedule="hapo")

_recipe("nlpo", "NLPO, RL4LMs (arXiv 2210.01241)",
        "PPO clip on the policy masked to the top-p set (0.9, >= 100 tokens) of a delayed copy synced every 20 "
        "steps, which also masks the rollouts' sampling; token-mean",
        rl__objective="nlpo", rl__credit="grpo", rl__loss_reduction="token_mean", rl__kl_coef=0.0,
        rollout__sampler="nlpo")

_recipe("a2tgpo", "A2TGPO: Agentic Turn-Group Policy Optimization with Adaptive Turn-level Clipping (arXiv 2605.06200)",
        "information gain per turn normalised per turn group, sqrt-rescaled accumulation, PPO clip scaled per turn "
        "by the IG-adaptive clip scale (multi-turn tasks)",
        rl__objective="a2tgpo", rl__credit="a2tgpo", rl__loss_reduction="token_mean", rl__kl_coef=0.0)

_recipe("vpr", "VPR: Verifiable Process Rewards (arXiv 2605.10325)",
        "state-group rollout: 4 candidate actions at each of 4 visited states scored by the task's oracle, the best "
        "committed; oracle score minus the state mean, whitened, flat states masked; token-mean (multi-turn tasks)",
        rl__objective="grpo", rl__credit="vpr", rl__loss_reduction="token_mean", rl__group_size=16,
        rollout__sampler="vpr")

# Objectives whose paper fixes the estimator and / or the reduction they run with: choosing the
# objective alone applies these to the fields the user left unset.
PAIRINGS: dict[str, dict[str, Any]] = {
    name: {k: v for k, v in RECIPES.get(name).fields.items()
           if k in ("rl.credit", "rl.loss_reduction", "rollout.sampler") and not (k == "rl.credit" and v == "grpo")}
    for name in ("dr_grpo", "gspo", "gspo_token", "sapo", "bn_gspo", "f_grpo", "lite_ppo", "ppo", "nlpo", "a2tgpo")
}
PAIRINGS = {k: v for k, v in PAIRINGS.items() if v}


def recipe_overrides(name: str) -> dict[str, Any]:
    """The dotted fields a recipe sets (raises CredoError naming the valid recipes)."""
    recipe = RECIPES.get(name)
    if not isinstance(recipe, Recipe):  # a dotted import path must name a Recipe
        raise CredoError(f"recipe {name!r} is not a credo.recipes.Recipe")
    return dict(recipe.fields)


def pairing_for(objective: str) -> dict[str, Any]:
    """The estimator / reduction an objective's paper pairs it with ({} when none)."""
    return dict(PAIRINGS.get(objective, {}))


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{"rl.objective": "gspo"} -> {"rl": {"objective": "gspo"}} (for config.apply)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def explicit_fields(loaded: dict[str, Any], overrides, prefix: str = "") -> set[str]:
    """The dotted fields a config file (nested dict) and command-line overrides set explicitly."""
    out = {k for k, _ in overrides} if overrides is not None else set()
    for key, value in loaded.items():
        if isinstance(value, dict) and key != "params" and not key.endswith("_params"):
            out |= explicit_fields(value, None, f"{prefix}{key}.")
        else:
            out.add(f"{prefix}{key}")
    return out


def apply_recipe(cfg, name: str) -> None:
    """Set every field of recipe `name` on cfg (a TrainConfig) and record it in rl.recipe."""
    from credo.config import apply

    apply(cfg, _nested(recipe_overrides(name)))
    cfg.rl.recipe = name


def apply_pairing(cfg, explicit: set[str]) -> list[str]:
    """The objective's paper pairing for the fields not in `explicit`; returns one note per field set.

    Applied only when the objective itself was chosen explicitly and no recipe is in effect (a recipe
    already names its estimator and reduction)."""
    from credo.config import apply

    if cfg.rl.recipe or "rl.objective" not in explicit:
        return []
    notes = []
    for key, value in pairing_for(cfg.rl.objective).items():
        if key in explicit:
            continue
        apply(cfg, _nested({key: value}))
        notes.append(f"{key} = {value!r} (the pairing of rl.objective {cfg.rl.objective!r} in its paper; "
                     f"set {key} to choose otherwise)")
    return notes


def table() -> str:
    """`credo list recipes`: one block per recipe."""
    lines = []
    for name in RECIPES.names():
        r = RECIPES.get(name)
        fields = ", ".join(f"{k}={v}" for k, v in r.fields.items())
        lines.append(f"{name:<22} {r.summary} [{r.paper}]\n{'':<22} {fields}")
    return "\n".join(lines)
