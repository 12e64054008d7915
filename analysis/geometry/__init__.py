"""Metric geometry of a generator's image manifold (Wang & Ponce, ICLR 2021; spec A), by topic:

- `analysis.geometry.hessian`: the metric Hessian ``H(z0)`` by four methods, HVP operators, Lanczos;
- `analysis.geometry.spectra`: spectra, homogeneity across codes, the shuffled-weights control;
- `analysis.geometry.walks`: image walks along eigenvectors, inversion in an eigenbasis.

Every function takes the generator (a callable codes -> images) and distance as arguments; the report
that loads a registered generator is `actmax analyze geometry` (`server.geometry`).
"""

from analysis.geometry.hessian import (
    METHODS,
    GeometryError,
    HessianResult,
    check_k,
    hvp_operator,
    lanczos_topk,
    metric_hessian,
)
from analysis.geometry.spectra import (
    average_hessian,
    code_distance_r,
    hessian_consistency,
    hessian_corr,
    shuffle_weights,
    spectrum_stats,
)
from analysis.geometry.walks import InversionResult, eigen_walk, invert, save_montage

__all__ = [
    "METHODS", "GeometryError", "HessianResult", "InversionResult", "average_hessian", "check_k", "code_distance_r",
    "eigen_walk", "hessian_consistency", "hessian_corr", "hvp_operator", "invert", "lanczos_topk",
    "metric_hessian", "save_montage", "shuffle_weights", "spectrum_stats",
]
