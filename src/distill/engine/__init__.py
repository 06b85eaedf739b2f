"""The single training loop and its checkpoints."""

from distill.engine.loop import FitJob, as_fp32, fit, model_output, setup_methods

__all__ = ["FitJob", "as_fp32", "fit", "model_output", "setup_methods"]
