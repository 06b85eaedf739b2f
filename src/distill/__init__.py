"""distill: knowledge distillation for PyTorch.

Three doors to one engine:

>>> import distill
>>> result = distill.fit(teacher=my_teacher, student=my_student, train=train_ds, test=test_ds,
...                      methods=[distill.methods.KD(T=4)], epochs=10, output_dir="runs/mine")  # doctest: +SKIP
>>> dm = distill.DistillationModel(student, teacher, methods=["kd"])  # your own loop  # doctest: +SKIP
>>> report = distill.run(distill.load_recipe("recipes/mnist-transfer-kd.yaml"))  # a recipe  # doctest: +SKIP
"""

from distill import methods
from distill.api import FitResult, fit
from distill.data import DATASETS
from distill.dropin import DistillationModel
from distill.errors import DistillError
from distill.extend import register_dataset, register_method, register_model
from distill.methods import METHODS
from distill.models import MODELS
from distill.plan import Plan, plan_from_recipe
from distill.recipe import Recipe, load_recipe
from distill.run import execute, run
from distill.search import auto

__all__ = ["DATASETS", "METHODS", "MODELS", "DistillError", "DistillationModel", "FitResult", "Plan", "Recipe",
           "auto", "execute", "fit", "load_recipe", "methods", "plan_from_recipe", "register_dataset",
           "register_method", "register_model", "run"]
__version__ = "0.1.0"
