"""How a job's configuration is resolved from the command line: preset -> recipe -> config file ->
dotted overrides, then the objective's pairing for the fields none of them set. Shared by `credo
train` (cli.py) and `credo compare` (report/compare.py), which resolves every arm the same way.
"""

from __future__ import annotations

from typing import Sequence

from credo.errors import CredoError


def _overrides(rest: Sequence[str]) -> list[tuple[str, str]]:
    """['--rl.lr', '1e-5', '--run.seed=3'] -> [('rl.lr', '1e-5'), ('run.seed', '3')]."""
    pairs, i = [], 0
    while i < len(rest):
        arg = rest[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise CredoError(f"unexpected argument {arg!r}; overrides look like --section.field VALUE")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(rest):
            value, i = rest[i + 1], i + 2
        else:
            raise CredoError(f"override {arg} has no value")
        pairs.append((key, value))
    return pairs


def resolve_config(preset: str | None, config_file: str | None, overrides: Sequence[tuple[str, str]],
                   recipe: str | None = None, notes: list[str] | None = None):
    """preset -> recipe -> config file -> overrides; then the objective's pairing (credo/recipes.py)
    for the fields none of them set. `notes` (if given) receives one line per pairing applied."""
    from credo import config as config_mod
    from credo import recipes
    from credo.presets import PRESETS

    loaded = config_mod.load_file(config_file) if config_file else {}
    name = preset or loaded.get("preset") or "default"
    cfg = PRESETS.get(name)()
    overrides = list(overrides)
    explicit = recipes.explicit_fields(loaded, overrides)
    rl_section = loaded.get("rl") if isinstance(loaded, dict) else None
    recipe = recipe or dict(overrides).get("rl.recipe") or (
        rl_section.get("recipe") if isinstance(rl_section, dict) else None)
    if recipe and not isinstance(recipe, str):
        raise CredoError(f"config field rl.recipe: expected a recipe name (a string), got {recipe!r}")
    if recipe:
        recipes.apply_recipe(cfg, recipe)
    if loaded:
        config_mod.apply(cfg, loaded)
        if preset:  # an explicit --preset names the run even if the file says otherwise
            cfg.preset = preset
    for key, value in overrides:
        config_mod.set_dotted(cfg, key, value)
    applied = recipes.apply_pairing(cfg, explicit)
    if notes is not None:
        notes.extend(applied)
    config_mod.check_ranges(cfg)  # every field against its marker, before anything loads
    return cfg
