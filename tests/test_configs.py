"""Every file in configs/ parses with the real LightningCLI parser: no key drifts from the code.

Recipes parse alone; fragments (configs/<group>/*.yaml) parse composed after the demo recipe,
or after the ImageNet recipe for groups that set ImageNet-only keys (`IMAGENET_GROUPS`).
jsonargparse rejects any key that no class reads, so parsing proves every key is used.
"""

from pathlib import Path

import pytest

from resnext_lit.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(CONFIGS.glob("*/*.yaml"))
IMAGENET_GROUPS = {"eval"}  # val_res / val_crop_ratio: the ImageNet DataModules' keys


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


@pytest.mark.parametrize("fragment", FRAGMENTS,
                         ids=[str(p.relative_to(CONFIGS)) for p in FRAGMENTS])
def test_fragment_composes_with_a_recipe(fragment, capsys):
    recipe = "imagenet_paper.yaml" if fragment.parent.name in IMAGENET_GROUPS else "demo.yaml"
    parse(CONFIGS / recipe, fragment, capsys=capsys)


def test_every_recipe_names_a_registered_arch():
    import yaml

    from resnext_lit.models import model_entry
    for recipe in RECIPES:
        model_entry(yaml.safe_load(recipe.read_text())["model"]["arch"])  # a name or an alias


@pytest.mark.parametrize("path", RECIPES + FRAGMENTS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_no_config_overrides_the_network_its_arch_names(path):
    """A config names its network by `model.arch` alone (configs/demo.yaml: resnext11_8x4d), so
    its runs' labels are the registry's name, never "<arch>-11layers-8x4d"."""
    import yaml

    from resnext_lit.models.registry import SHAPE
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    assert not set(SHAPE) & set(model), f"{path.name} overrides {set(SHAPE) & set(model)}"
