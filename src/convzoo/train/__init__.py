"""Training, evaluation and comparison of runs: recipes, the training loop, run folders and checkpoints."""

from .recipes import RECIPES, Recipe, get_recipe, learning_rate, list_recipes
from .trainer import DivergedError, TrainOptions, train

__all__ = ["RECIPES", "DivergedError", "Recipe", "TrainOptions", "get_recipe", "learning_rate", "list_recipes",
           "train"]
