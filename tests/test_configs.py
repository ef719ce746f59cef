"""Every file in configs/ parses with the real LightningCLI parser: no key drifts from the code.

Recipes parse alone; fragments (configs/<group>/*.yaml) parse composed after the demo recipe.
jsonargparse rejects any key that no class reads, so parsing proves every key is used.
"""

from pathlib import Path

import pytest

from resnext_lit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(CONFIGS.glob("*/*.yaml"))


def parse(*configs, capsys):
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    assert done.value.code in (0, None), out.err
    return out.out


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_parses(recipe, capsys):
    printed = parse(recipe, capsys=capsys)
    assert "arch:" in printed and "max_epochs:" in printed


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=[str(p.relative_to(CONFIGS)) for p in FRAGMENTS])
def test_fragment_composes_with_a_recipe(fragment, capsys):
    parse(CONFIGS / "demo.yaml", fragment, capsys=capsys)


def test_every_recipe_names_a_registered_arch():
    import yaml

    from resnext_lit.models import list_models
    for recipe in RECIPES:
        assert yaml.safe_load(recipe.read_text())["model"]["arch"] in list_models(), recipe
