"""Distillation methods, one file each; importing this package registers them all."""

from distill.methods import (  # noqa: F401  (registration side effects)
    ab,
    at,
    cc,
    ce,
    crd,
    dist,
    dkd,
    fitnet,
    fsp,
    ft,
    kd,
    kdsvd,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    vid,
)
from distill.methods.base import METHODS, Method, MethodSet, labelled_cross_entropy

__all__ = ["METHODS", "Method", "MethodSet", "labelled_cross_entropy", "build_method"]


def build_method(name: str, **kwargs: object) -> Method:
    """Instantiate the method registered as ``name`` with its keyword arguments."""
    return METHODS.get(name)(**kwargs)
