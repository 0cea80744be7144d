"""Small fixed structures whose known-good energies are checked on load."""

from __future__ import annotations

from ase import Atoms


def mos_cscl(a: float = 4.0) -> Atoms:
    """CsCl-type MoS, cubic ``a`` Å: Mo at the origin, S at the body centre."""
    return Atoms("MoS", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[a, a, a], pbc=True)


FINGERPRINT_STRUCTURES = {"MoS-CsCl-4.0": mos_cscl}
