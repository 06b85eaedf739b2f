"""distill: knowledge distillation for PyTorch.

>>> from distill import load_recipe, run
>>> report = run(load_recipe("recipes/mnist-transfer-kd.yaml", ["train.epochs=2"]))
"""

from distill.data import DATASETS
from distill.errors import DistillError
from distill.methods import METHODS
from distill.models import MODELS
from distill.recipe import Recipe, load_recipe
from distill.run import run

__all__ = ["DATASETS", "METHODS", "MODELS", "DistillError", "Recipe", "load_recipe", "run"]
__version__ = "0.1.0"
