"""The method catalog printed by `credo list`: name, one line, paper, status, needs."""

from __future__ import annotations

from credo.entry import Entry

__all__ = ["Entry", "entries", "table", "markdown", "catalog_markdown", "print_catalog"]

# Each method module holds a `CATALOG` list of `Entry` rows next to its code, importing `Entry` from
# the leaf module `credo.entry` (not from here: this module imports the method packages, lazily,
# inside the listing functions, so importing it costs nothing and no method module depends on it).
# `entries()` collects the rows from every module of a package, and a test checks that registry and
# catalog name the same set; tests/test_import_cycles.py checks the package has no import cycle.


def entries(package) -> list[Entry]:
    """All `CATALOG` rows of the modules of `package` (e.g. credo.objectives), sorted by name."""
    import importlib
    import pkgutil

    rows: list[Entry] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        rows.extend(getattr(module, "CATALOG", []))
    return sorted(rows, key=lambda e: e.name)


def table(rows: list[Entry]) -> str:
    """A plain-text table (`credo list`): one block per method, the training status on its own line."""
    width = max([len(e.name) for e in rows] + [4])
    needs = max([len(e.needs) for e in rows] + [5])
    head = f"{'name':<{width}}  {'status':<13}  {'needs':<{needs}}  summary [paper]"
    lines = [head, "-" * len(head)]
    for e in rows:
        lines.append(f"{e.name:<{width}}  {e.status:<13}  {e.needs:<{needs}}  {e.summary} [{e.paper}]")
        lines.append(f"{'':<{width}}  in training: {e.training}")
    return "\n".join(lines)


def markdown(rows: list[Entry]) -> str:
    """The same rows as a Markdown table (docs/catalog.md)."""
    lines = ["| name | status | in training | needs | summary | paper |", "|---|---|---|---|---|---|"]
    for e in rows:
        cells = [f"`{e.name}`", e.status, e.training, e.needs, e.summary, e.paper]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def catalog_markdown() -> str:
    """The whole docs/catalog.md page, generated from the code (`python -m credo.catalog`)."""
    import credo.credit
    import credo.objectives

    return (
        "# Method catalog\n\n"
        "Generated from the code by `python -m credo.catalog > docs/catalog.md` (a test checks it is current).\n"
        "Status: *confirmed* methods follow the authors' code or a reference implementation exactly;\n"
        "*reconstructed* ones implement the paper's stated math, and their docstrings say what was assumed.\n"
        "*In training*: \"works\" when the paper's signal, sampler, judge or schedule runs in a credo training run\n"
        "(a test proves it); otherwise one line says what stands in or what is missing, and why.\n\n"
        "## Policy objectives (`rl.objective`)\n\n" + markdown(entries(credo.objectives)) + "\n\n"
        "## Credit estimators (`rl.credit`)\n\n" + markdown(entries(credo.credit)) + "\n\n"
        "## Importance-sampling corrections (`rl.is_correction`)\n\n" + markdown(correction_entries()) + "\n\n"
        "## Adaptive sampling temperatures (`rollout.temperature_schedule`)\n\n" + markdown(schedule_entries()) + "\n\n"
        "## Group samplers (`rollout.sampler`)\n\n" + markdown(sampler_entries()) + "\n\n"
        "## Entropy control (`rl.entropy_control`)\n\n" + markdown(entropy_control_entries()) + "\n\n"
        "## Reward terms (`rl.reward_terms`)\n\n" + markdown(reward_term_entries()) + "\n\n"
        "## Sample and data selection (`rl.sample_selection`, `rl.data_selection`)\n\n"
        + markdown(selection_entries()) + "\n\n"
        "## Curricula (`rl.curriculum`)\n\n" + markdown(curriculum_entries()) + "\n\n"
        "## Supervised mixing in RL (`rl.sft_mix`)\n\n" + markdown(mixing_entries()) + "\n\n"
        "## Critic warm starts (`rl.warm_start`)\n\n" + markdown(warm_start_entries()) + "\n\n"
        "## Training stages (`credo pipeline`, `[[stages]] kind`)\n\n" + markdown(stage_entries()) + "\n\n"
        "## Recipes (`credo train --recipe NAME`, `rl.recipe`)\n\n" + recipe_markdown() + "\n"
    )


def recipe_markdown() -> str:
    """One table row per recipe: name, paper, what it sets."""
    from credo.recipes import RECIPES

    rows = ["| recipe | paper | summary | fields |", "|---|---|---|---|"]
    for name in RECIPES.names():
        r = RECIPES.get(name)
        fields = ", ".join(f"`{k}={v}`" for k, v in r.fields.items())
        rows.append(f"| `{name}` | {r.paper} | {r.summary} | {fields} |")
    return "\n".join(rows)


def _rows(module: str, attr: str = "CATALOG") -> list[Entry]:
    """The catalog rows a method module keeps in `attr`, sorted by name (imported only when listed)."""
    import importlib

    return sorted(getattr(importlib.import_module(module), attr), key=lambda e: e.name)


def schedule_entries() -> list[Entry]:
    """The adaptive sampling temperatures (rollout/temperature.py)."""
    return _rows("credo.rollout.temperature")


def sampler_entries() -> list[Entry]:
    """The group samplers (rollout/samplers.py)."""
    return _rows("credo.rollout.samplers", "SAMPLERS_CATALOG")


def entropy_control_entries() -> list[Entry]:
    """The entropy-coefficient controllers (objectives/entropy_control.py)."""
    return _rows("credo.objectives.entropy_control", "CONTROLS_CATALOG")


def curriculum_entries() -> list[Entry]:
    """The difficulty curricula (train/curriculum.py), the context-length phases (train/context_schedule.py)
    and TAROT's tier-weight curriculum (train/tarot.py)."""
    return sorted(_rows("credo.train.curriculum") + _rows("credo.train.context_schedule") + _rows("credo.train.tarot"),
                  key=lambda e: e.name)


def selection_entries() -> list[Entry]:
    """The sample-selection rules (select/d3s.py) and the prompt-pool selection (select/datamask.py)."""
    return sorted(_rows("credo.select.d3s") + _rows("credo.select.datamask"), key=lambda e: e.name)


def reward_term_entries() -> list[Entry]:
    """The weighted reward terms (rewards/terms.py)."""
    return _rows("credo.rewards.terms")


def mixing_entries() -> list[Entry]:
    """The supervised losses mixed into RL optimizer steps (train/sft_mix.py: CHORD; train/rmt.py: RMT)."""
    return sorted(_rows("credo.train.sft_mix") + _rows("credo.train.rmt"), key=lambda e: e.name)


def warm_start_entries() -> list[Entry]:
    """The warm starts of PPO's critic before RL (train/warm_start.py: WSRL and its replay baseline)."""
    return _rows("credo.train.warm_start")


def stage_entries() -> list[Entry]:
    """The training stages a pipeline chains (stages/)."""
    import credo.stages

    return entries(credo.stages)


def correction_entries() -> list[Entry]:
    """The importance-sampling corrections (objectives/is_correction.py)."""
    return _rows("credo.objectives.is_correction", "CORRECTIONS_CATALOG")


def print_catalog(what: str = "all") -> None:
    from credo.presets import PRESETS
    from credo.tasks import TASKS

    if what in ("all", "presets"):
        print("presets: " + ", ".join(PRESETS.names()))
    if what in ("all", "tasks"):
        print("tasks: " + ", ".join(TASKS.names()))
    if what in ("all", "recipes"):
        from credo.recipes import table as recipe_table

        print("\nrecipes (credo train --recipe NAME):\n" + recipe_table())
    import credo.credit
    import credo.objectives

    if what in ("all", "objectives"):
        print("\nobjectives:\n" + table(entries(credo.objectives)))
    if what in ("all", "credit"):
        print("\ncredit estimators:\n" + table(entries(credo.credit)))
    if what in ("all", "corrections"):
        print("\nimportance-sampling corrections (rl.is_correction):\n" + table(correction_entries()))
    if what in ("all", "samplers"):
        print("\ngroup samplers (rollout.sampler):\n" + table(sampler_entries()))
        print("\nadaptive sampling temperatures (rollout.temperature_schedule):\n" + table(schedule_entries()))
    if what in ("all", "entropy"):
        print("\nentropy control (rl.entropy_control):\n" + table(entropy_control_entries()))
    if what in ("all", "rewards"):
        print("\nreward terms (rl.reward_terms):\n" + table(reward_term_entries()))
    if what in ("all", "selection"):
        print("\nsample and data selection (rl.sample_selection, rl.data_selection):\n" + table(selection_entries()))
    if what in ("all", "curricula"):
        print("\ncurricula (rl.curriculum):\n" + table(curriculum_entries()))
    if what in ("all", "mixing"):
        print("\nsupervised mixing in RL (rl.sft_mix):\n" + table(mixing_entries()))
    if what in ("all", "warmstart"):
        print("\ncritic warm starts (rl.warm_start):\n" + table(warm_start_entries()))
    if what in ("all", "stages"):
        print("\ntraining stages (credo pipeline [[stages]] kind):\n" + table(stage_entries()))


if __name__ == "__main__":
    print(catalog_markdown(), end="")
