"""The single training loop and its checkpoints."""

from distill.engine.loop import FitJob, fit, setup_methods

__all__ = ["FitJob", "fit", "setup_methods"]
