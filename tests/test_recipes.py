"""Recipes: the seed's values, overriding fields from the command line, the learning-rate schedule, the
Keras L2 penalty, model arguments from JSON, and the loss with an auxiliary head."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from convzoo import create_model
from convzoo.cli import main
from convzoo.errors import ConfigError
from convzoo.models.xception import Block
from convzoo.registry import get_model_cfg, model_kwargs_from_json
from convzoo.train.build import kernels, make_optimizer, rebuild_args
from convzoo.train.recipes import RECIPES, Recipe, apply_settings, from_dict, get_recipe, learning_rate, list_recipes
from convzoo.train.trainer import classification_loss

SEED_VARIANTS = ["xception_cifar", "xception_cifar_he_wd", "xception_cifar_slim", "xception_cifar_slim_thinner",
                 "inception_v3_cifar"]


@pytest.mark.parametrize("name", SEED_VARIANTS)
def test_seed_recipe_for_each_variant(name):
    r = get_recipe(name)
    assert r.model == name
    assert (r.batch_size, r.epochs, r.optimizer, r.momentum, r.nesterov) == (64, 300, "sgd", 0.9, True)
    # the seed's CIFAR-10 statistics are the CIFAR model's own preprocessing, not a recipe setting (which
    # would also reach a model fine-tuned from weights with another preprocessing)
    assert (r.preprocessing, r.mean, r.std) == (None, None, None) and get_model_cfg(name).preprocessing == "cifar"
    assert (r.flip, r.shift, r.label_smoothing, r.weight_decay) == (True, 0.125, 0.0, 0.0)
    lrs = [learning_rate(r, e) for e in (0, 99.99, 100, 199.5, 200, 299.9)]
    assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001])
    he_wd = name not in ("xception_cifar", "inception_v3_cifar")
    assert r.kernel_l2 == (1e-4 if he_wd else 0.0)
    with torch.device("meta"):
        assert r.kernel_l2 == getattr(create_model(name), "kernel_l2", 0.0)


def test_fast_recipe_is_listed_and_valid():
    assert set(SEED_VARIANTS) | {"fast"} <= set(list_recipes())
    fast = get_recipe("fast").validate()
    assert fast.label_smoothing > 0 and fast.schedule in ("cosine", "linear") and fast.warmup_epochs > 0
    assert learning_rate(fast, 0) < learning_rate(fast, fast.warmup_epochs) == pytest.approx(fast.lr)
    assert learning_rate(fast, fast.epochs) == pytest.approx(fast.min_lr)


def test_get_recipe_returns_a_copy():
    r = get_recipe("fast")
    r.model_kwargs["x"] = 1
    r.epochs = 1
    assert "x" not in RECIPES["fast"].model_kwargs and RECIPES["fast"].epochs != 1


def test_settings_are_parsed_by_field_type():
    r = apply_settings(get_recipe("xception_cifar"), [
        "epochs=5", "lr=0.1", "nesterov=false", "milestones=2,4", "kernel_l2=none", "mean=1,2,3", "std=[4,5,6]",
        'model_kwargs={"drop_rate": 0.2}', "input_size=64,64", "schedule=cosine"])
    assert (r.epochs, r.lr, r.nesterov, r.milestones, r.kernel_l2) == (5, 0.1, False, (2, 4), None)
    assert (r.mean, r.std, r.model_kwargs, r.input_size) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0), {"drop_rate": 0.2},
                                                             (64, 64))
    assert from_dict(r.as_dict()) == r


@pytest.mark.parametrize("setting, message", [
    ("no_such=1", "unknown recipe field 'no_such'"),
    ("epoch=3", "closest: epochs"),
    ("epochs=three", "expected an integer"),
    ("nesterov=maybe", "expected true or false"),
    ("model_kwargs={bad", "expected a JSON object"),
    ("missing_equals", "field=value"),
    ("lr=nan", "recipe field lr: expected a finite number"),
    ("milestones=a,b", "expected a list of integers"),
    ("input_size=64", "expected 2 values"),
    ("epochs=none", "expected an integer"),
])
def test_bad_settings_raise_config_error(setting, message):
    with pytest.raises(ConfigError, match=message):
        apply_settings(get_recipe("fast"), [setting])


def test_unknown_recipe_names_the_closest():
    with pytest.raises(ConfigError, match="closest: xception_cifar"):
        get_recipe("xception_cifr")


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("schedule", "exp"),
                                          ("label_smoothing", 1.0), ("shift", 0.6), ("std", (1.0, 0.0, 1.0))])
def test_validate_rejects_unusable_values(field, value):
    r = dataclasses.replace(get_recipe("xception_cifar"), **{field: value})
    with pytest.raises(ConfigError, match=f"{field} must"):
        r.validate()


@pytest.mark.parametrize("values, message", [
    ({"schedule": "step", "milestones": (1, 2), "gamma": 1e30}, r"lr \* gamma \*\* 2, must be at most 3.40282e\+38"),
    ({"lr": 0.1, "min_lr": 0.2}, "min_lr must be at most lr"),
    ({"momentum": 1.5}, r"momentum must be in \[0, 1\], got 1.5"),
    ({"mean": (1.0, 2.0), "std": (1.0, 2.0)}, "3 values"),
])
def test_validate_rejects_values_no_run_could_use(values, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(get_recipe("fast"), **values).validate()


def test_recorded_recipe_out_of_range_is_refused():
    """A config.json edited by hand: from_dict checks each number against its field's range."""
    values = get_recipe("fast").as_dict() | {"warmup_start": 2.0}
    with pytest.raises(ConfigError, match=r"recipe field warmup_start must be in \[0, 1\], got 2.0"):
        from_dict(values)


def test_cosine_warmup_schedule():
    r = Recipe(lr=1.0, epochs=10, schedule="cosine", warmup_epochs=2, warmup_start=0.1, min_lr=0.0)
    assert learning_rate(r, 0) == pytest.approx(0.1)
    assert learning_rate(r, 1) == pytest.approx(0.55)
    assert learning_rate(r, 2) == pytest.approx(1.0)
    assert learning_rate(r, 6) == pytest.approx(0.5)
    assert learning_rate(r, 10) == pytest.approx(0.0, abs=1e-12)


def test_keras_l2_penalty_equals_sgd_weight_decay_twice_l2_on_kernels():
    """The relation in the Recipe docstring: l2 * sum(w**2) over kernels == SGD weight_decay 2 * l2 on kernels."""
    l2 = 1e-2
    base = create_model("xception_cifar", stem=((8, 2), (16, 1)), blocks=(Block((16, 16)),))
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    penalised, decayed = copy.deepcopy(base), copy.deepcopy(base)
    for model, recipe in ((penalised, Recipe(kernel_l2=l2)), (decayed, Recipe(weight_decay=2 * l2))):
        opt = make_optimizer(recipe, model)
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            if recipe.kernel_l2:
                loss = loss + l2 * sum(w.pow(2).sum() for w in kernels(model))
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, a), b in zip(penalised.state_dict().items(), decayed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_weight_decay_acts_on_kernels_only():
    model = create_model("xception_cifar", stem=((8, 2), (16, 1)), blocks=(Block((16, 16)),))
    decay, rest = make_optimizer(Recipe(weight_decay=1e-3), model).param_groups
    ids = {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0
    assert id(model.fc.weight) in ids and id(model.fc.bias) not in ids
    assert id(model.block1.conv1_bn.weight) not in ids and id(model.block2.sepconv1.depthwise.weight) in ids
    assert len(ids) + len(rest["params"]) == len(list(model.parameters()))


def test_model_kwargs_from_json_build_the_tables():
    kwargs = model_kwargs_from_json("xception_cifar", {"stem": [[8, 2], [16, 1]],
                                                       "blocks": [{"widths": [16, 16], "stride": 2, "pool": True}]})
    assert kwargs == {"stem": ((8, 2), (16, 1)), "blocks": (Block((16, 16), stride=2, pool=True),)}
    assert rebuild_args(Recipe(model_kwargs={"blocks": [{"widths": [16]}]}), 10) == {
        "num_classes": 10, "blocks": [{"widths": [16]}]}
    assert rebuild_args(Recipe(model="inception_v3_cifar", model_kwargs={"aux_logits": True}), 7) == {
        "num_classes": 7, "aux_logits": True}
    with pytest.raises(ConfigError, match="no field"):
        model_kwargs_from_json("xception_cifar", {"blocks": [{"width": [16]}]})


def test_aux_head_adds_0_4_of_its_loss():
    logits, aux, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    total, ce, correct = classification_loss((logits, aux), y, Recipe())
    expected = F.cross_entropy(logits, y, reduction="sum") + 0.4 * F.cross_entropy(aux, y, reduction="sum")
    assert torch.allclose(total, expected) and torch.allclose(ce, F.cross_entropy(logits, y, reduction="sum"))
    assert correct == (logits.argmax(1) == y).sum()
    total, ce, _ = classification_loss(logits, y, Recipe())
    assert torch.equal(total, ce)


def test_recipes_command(capsys):
    assert main(["recipes"]) == 0
    assert "xception_cifar_he_wd" in capsys.readouterr().out
    assert main(["recipes", "xception_cifar_he_wd"]) == 0
    assert "kernel_l2        0.0001" in capsys.readouterr().out
    assert main(["recipes", "nope"]) == 2
