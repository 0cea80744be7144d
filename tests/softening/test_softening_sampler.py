"""High-energy structure proposals (mlff_calc.softening_sampler)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk


def test_sampler_md_and_strains(chgnet_calc, tmp_path):
    import ase.io

    from mlff_calc.softening_sampler import sample_high_energy

    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    out = tmp_path / "proposals.extxyz"
    proposals = sample_high_energy(atoms, chgnet_calc, n_frames=2, interval=5, equilibration=5, n_strained=2, max_strain=0.03, seed=1, out=out)
    assert len(proposals) == 2 * 3
    assert [p.info["sampler_source"] for p in proposals] == ["md", "md+strain", "md+strain"] * 2
    for p in proposals:
        assert p.calc is None  # no model labels that could pass for DFT ones
        eps = np.asarray(p.info["strain"]).reshape(3, 3)
        assert np.allclose(eps, eps.T) and np.abs(eps).max() <= 0.03
        assert np.allclose(p.cell.array, atoms.cell.array @ (np.eye(3) + eps))
    md = [p for p in proposals if p.info["sampler_source"] == "md"]
    assert np.abs(md[0].positions - atoms.positions).max() > 0.01  # atoms moved at 1000 K
    assert np.abs(proposals[1].info["strain"]).max() > 0
    back = ase.io.read(out, ":")
    assert len(back) == len(proposals)
    np.testing.assert_allclose(back[-1].positions, proposals[-1].positions, atol=1e-6)
    # deterministic for a seed
    again = sample_high_energy(atoms, chgnet_calc, n_frames=2, interval=5, equilibration=5, n_strained=2, seed=1)
    np.testing.assert_allclose(again[-1].positions, proposals[-1].positions, atol=1e-5)


def test_sampler_rejects_nonsense(chgnet_calc):
    from mlff_calc.errors import ConfigurationError
    from mlff_calc.softening_sampler import sample_high_energy

    with pytest.raises(ConfigurationError):
        sample_high_energy(bulk("Si", "diamond", 5.43), chgnet_calc, n_frames=0)
