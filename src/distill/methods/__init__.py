"""Distillation methods, one file each; importing this package registers them all."""

from distill.methods import (  # noqa: F401  (registration side effects)
    ab,
    at,
    cc,
    ce,
    crd,
    defensive,
    dist,
    dkd,
    embedding,
    fitnet,
    fsp,
    ft,
    hkd,
    irg,
    kd,
    kdsvd,
    logits,
    lsr,
    nst,
    ofd,
    pkt,
    reviewkd,
    rkd,
    sp,
    tfkd,
    tinybert,
    token_kd,
    uld,
    vid,
)
from distill.methods.ab import AB
from distill.methods.at import AT
from distill.methods.base import METHODS, Method, MethodSet, labelled_cross_entropy
from distill.methods.cc import CC
from distill.methods.ce import CE
from distill.methods.crd import CRD
from distill.methods.defensive import DefensiveDistillation
from distill.methods.dist import DIST
from distill.methods.dkd import DKD
from distill.methods.embedding import EmbeddingDistillation
from distill.methods.fitnet import FitNet
from distill.methods.fsp import FSP
from distill.methods.ft import FT
from distill.methods.hkd import HKD
from distill.methods.irg import IRG
from distill.methods.kd import KD
from distill.methods.kdsvd import KDSVD
from distill.methods.logits import LogitMatching
from distill.methods.lsr import LSR
from distill.methods.nst import NST
from distill.methods.ofd import OFD
from distill.methods.pkt import PKT
from distill.methods.reviewkd import ReviewKD
from distill.methods.rkd import RKD
from distill.methods.sp import SP
from distill.methods.tfkd import TfKD
from distill.methods.tinybert import TinyBERT
from distill.methods.uld import ULD
from distill.methods.vid import VID

__all__ = ["METHODS", "Method", "MethodSet", "labelled_cross_entropy", "build_method",
           "AB", "AT", "CC", "CE", "CRD", "DefensiveDistillation", "DIST", "DKD", "EmbeddingDistillation", "FitNet",
           "FSP", "FT", "HKD", "IRG", "KD", "KDSVD",
           "LogitMatching", "LSR", "NST", "OFD", "PKT", "ReviewKD", "RKD", "SP", "TfKD", "TinyBERT", "ULD", "VID"]


def build_method(name: str, **kwargs: object) -> Method:
    """Instantiate the method registered as ``name`` with its keyword arguments."""
    return METHODS.get(name)(**kwargs)
