"""The single training loop and its checkpoints."""

from distill.engine.loop import FitJob, fit

__all__ = ["FitJob", "fit"]
