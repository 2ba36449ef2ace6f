"""The catalog and the registries name the same methods, and every row is complete."""

import pytest

import credo.credit
import credo.objectives
from credo.catalog import entries, table
from credo.cli import main
from credo.credit import CREDIT
from credo.objectives import OBJECTIVES


@pytest.mark.parametrize("package, registry", [(credo.objectives, OBJECTIVES), (credo.credit, CREDIT)])
def test_catalog_matches_registry(package, registry):
    rows = entries(package)
    names = [e.name for e in rows]
    assert len(names) == len(set(names)), "a method has two catalog rows"
    assert set(names) == set(registry.names())
    for e in rows:
        assert e.status in ("confirmed", "reconstructed"), e
        assert "arXiv" in e.paper and e.summary and e.needs, e


def test_registered_functions_have_documented_shapes_and_paper():
    for registry in (OBJECTIVES, CREDIT):
        for name in registry.names():
            doc = registry.get(name).__doc__ or ""
            assert "arXiv" in doc and "[B" in doc, f"{name}: docstring lacks the paper or shapes"


def test_list_command_prints_every_method(capsys):
    assert main(["list", "objectives"]) == 0
    out = capsys.readouterr().out
    for name in OBJECTIVES.names():
        assert f"\n{name} " in out
    assert table(entries(credo.objectives)).splitlines()[0].startswith("name")


def test_docs_catalog_is_current():
    from pathlib import Path

    from credo.catalog import catalog_markdown

    page = Path(__file__).parents[1] / "docs" / "catalog.md"
    assert page.read_text() == catalog_markdown(), "regenerate: python -m credo.catalog > docs/catalog.md"
