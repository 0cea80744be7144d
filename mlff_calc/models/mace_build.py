"""Build ScaleShiftMACE models with mace-torch's own constructors.

Used for tests and benchmarks where the published MACE-MP-0 weights are not at
hand: the ``medium`` preset is the MACE-MP-0 medium architecture (2
RealAgnosticResidual interactions, 128x0e+128x1o, max_ell 3, correlation 3,
r_max 6 Å, 10 Bessel functions, radial MLP [64, 64, 64]; 4,688,656 parameters
for 89 elements) with random weights. ``small`` is a fast model for tests.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from .._runtime import backend
from .mace import mace_scope

#: published MACE-MP-0 files (see mace/calculators/foundations_models.py)
MP0_URL = "https://github.com/ACEsuit/mace-mp/releases/download/mace_mp_0/"
MP0_FILES = {
    "small": "2023-12-10-mace-128-L0_energy_epoch-249.model",
    "medium": "2023-12-03-mace-128-L1_epoch-199.model",
    "large": "MACE_MPtrj_2022.9.model",
}

#: the elements of MACE-MP-0 (H..Pu, Z = 1..94 without Po, At, Rn, Fr, Ra)
MP0_ELEMENTS = tuple(z for z in range(1, 95) if z not in (84, 85, 86, 87, 88))
#: elements of the small test model: H C O Na Si Cl Cu
SMALL_ELEMENTS = (1, 6, 8, 11, 14, 17, 29)

PRESETS = {
    "medium": dict(r_max=6.0, channels=128, max_L=1, max_ell=3, correlation=3, num_interactions=2, num_bessel=10, radial_mlp=(64, 64, 64)),
    "small": dict(r_max=5.0, channels=8, max_L=1, max_ell=2, correlation=2, num_interactions=2, num_bessel=6, radial_mlp=(16, 16)),
}


def build_scaleshift_mace(
    *,
    atomic_numbers: Sequence[int],
    r_max: float = 6.0,
    channels: int = 128,
    max_L: int = 1,
    max_ell: int = 3,
    correlation: int = 3,
    num_interactions: int = 2,
    num_bessel: int = 10,
    num_polynomial_cutoff: int = 5,
    radial_mlp: Sequence[int] = (64, 64, 64),
    mlp_irreps: str = "16x0e",
    atomic_energies: Mapping[int, float] | Sequence[float] | None = None,
    avg_num_neighbors: float = 30.0,
    scale: float = 1.0,
    shift: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``mace.modules.ScaleShiftMACE``.

    ``atomic_energies`` (E0s, eV) is a ``{Z: E0}`` mapping or a sequence in
    ascending-Z order; ``None`` gives zeros. The global torch RNG, default dtype
    and ``os.environ`` are left as they were.
    """
    zs = sorted({int(z) for z in atomic_numbers})
    if isinstance(atomic_energies, Mapping):
        e0 = np.array([float(atomic_energies[z]) for z in zs])
    elif atomic_energies is None:
        e0 = np.zeros(len(zs))
    else:
        e0 = np.asarray(atomic_energies, dtype=float)
        if e0.shape != (len(zs),):
            raise ValueError(f"atomic_energies has shape {e0.shape}; expected ({len(zs)},), one per element")
    with mace_scope(), torch.random.fork_rng(devices=[]):
        with backend("mace", "a MACE model"):
            from e3nn import o3
            from mace import modules

        torch.set_default_dtype(dtype)
        torch.manual_seed(seed)
        hidden = (channels * o3.Irreps.spherical_harmonics(max_L)).sort()[0].simplify()
        return modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=num_bessel,
            num_polynomial_cutoff=num_polynomial_cutoff,
            max_ell=max_ell,
            interaction_cls=modules.RealAgnosticResidualInteractionBlock,
            interaction_cls_first=modules.RealAgnosticResidualInteractionBlock,
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=hidden,
            MLP_irreps=o3.Irreps(mlp_irreps),
            atomic_energies=e0,
            avg_num_neighbors=float(avg_num_neighbors),
            atomic_numbers=zs,
            correlation=correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp),
            atomic_inter_scale=float(scale),
            atomic_inter_shift=float(shift),
        )


def build_preset(name: str, *, atomic_numbers: Sequence[int], **overrides):
    """``build_scaleshift_mace`` with the ``small`` or ``medium`` architecture."""
    if name not in PRESETS:
        raise ValueError(f"unknown MACE preset {name!r}; known: {', '.join(PRESETS)}")
    return build_scaleshift_mace(atomic_numbers=atomic_numbers, **{**PRESETS[name], **overrides})


def build_small_mace(atomic_numbers: Sequence[int] = SMALL_ELEMENTS, **overrides):
    """The small test model: distinct E0s, a non-trivial scale and shift."""
    zs = sorted({int(z) for z in atomic_numbers})
    defaults = dict(atomic_energies={z: -0.5 - 0.37 * k for k, z in enumerate(zs)}, scale=4.0, shift=-0.1, avg_num_neighbors=12.0)
    return build_preset("small", atomic_numbers=zs, **{**defaults, **overrides})


def build_medium_mace(atomic_numbers: Sequence[int] = MP0_ELEMENTS, **overrides):
    """The MACE-MP-0 medium architecture with random weights (benchmarks)."""
    return build_preset("medium", atomic_numbers=atomic_numbers, **overrides)
