"""Training, evaluation and comparison of runs: recipes, the training loop, run folders and checkpoints.

``start(TrainOptions(...))`` or ``resume(...)`` returns a :class:`Run`; ``Run.fit()`` trains it. The
command-line verbs are in :mod:`convzoo.cli.train`.
"""

from ..errors import DivergedError
from .recipes import RECIPES, Recipe, get_recipe, learning_rate, list_recipes
from .trainer import Run, TrainOptions, resume, start, train

__all__ = ["RECIPES", "DivergedError", "Recipe", "Run", "TrainOptions", "get_recipe", "learning_rate",
           "list_recipes", "resume", "start", "train"]
