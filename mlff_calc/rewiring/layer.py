"""Test-time radius refinement (Kreiman & Krishnapriyan 2025) as a calculator layer.

For each system the layer picks, once, the candidate cutoff ``r*`` whose radius
graph has the Laplacian spectrum closest to the model's training graphs (a
:class:`~mlff_calc.rewiring.SpectrumReference`), then asks the adapter to build
every graph of that system at ``r*`` (``request.cutoff``).

``r*`` is chosen on first use of a system, or by an explicit :meth:`RewiringLayer.refine`,
and then held fixed: an MD run or a relaxation never changes it, however far the
atoms move. :meth:`RewiringLayer.reset` (``MLFFCalculator.reset_layers()``) forgets
every choice so the next call picks again.

A *system* is keyed by its Hill chemical formula plus its number of atoms
(``"Si64|64"``): every structure of that composition and size shares one ``r*``,
including different polymorphs; call :meth:`refine` or :meth:`reset` to choose
again for another phase.

How edges end at ``r*`` depends on the model family. The model's own radial
envelope goes to zero at its native cutoff, not at ``r*``:

* MACE and distilled students: the adapter multiplies every edge's radial
  features by a smooth switch, 1 up to ``r* - w`` and 0 at ``r*`` with zero first
  and second derivatives (``w = adapter.switch_width_A``, default 0.25 Å, never
  wider than ``r*``; see :class:`~mlff_calc.models.mace.MACEAdapter`). Energy and
  forces stay continuous as pairs cross ``r*``, and NVE MD with ``r*`` frozen
  conserves energy like the plain model. Pairs within ``w`` below ``r*`` count
  partially, so the prediction is that of a slightly smaller graph than the one
  whose spectrum was matched.
* CHGNet and M3GNet (and MACE with ``switch_width_A = 0``): the graph is cut
  sharply at ``r*``, so when a pair crosses ``r*`` during MD the energy jumps by
  that pair's contribution.

For the sharp cut, a refined ``r*`` is by default (``centre=True``) placed in the
middle of the gap between neighbour distances around the chosen candidate (the
same graph, so the same prediction), which keeps crossings rare while atoms
vibrate about their positions at the time of the choice. In rattled or hot
structures the chosen candidate often lies inside a neighbour shell, the gap is
then ~0.001 Å wide and centring cannot help: the layer logs a warning (gap
narrower than :data:`NARROW_GAP`; only for an adapter that cuts sharply), and MD
with that ``r*`` drifts far more than with the plain model
(``benchmarks/rewiring_shifts.py``).

Results gain ``r_star`` (Å), ``rewiring_radii`` (the candidates, Å) and
``rewiring_distances`` (the spectral distance at each candidate).
"""

from __future__ import annotations

import logging

from ..errors import ConfigurationError
from ..layers.base import Layer, Request
from .reference import DEFAULT_N_RADII, DENSE_MAX, DISTANCES, RadiusChoice, SpectrumReference, candidate_radii, choose_radius

log = logging.getLogger(__name__)

#: a refined r* closer than half this (Å) to a neighbour distance is logged as a warning
NARROW_GAP = 0.1


def system_key(atoms) -> str:
    """The per-system key: Hill formula and number of atoms."""
    return f"{atoms.get_chemical_formula(mode='hill')}|{len(atoms)}"


class RewiringLayer(Layer):
    """Evaluate each system on the graph at its spectrally refined cutoff ``r*``.

    ``reference``: the model's training-graph spectra (built for this model at its
    native cutoff; another model or cutoff raises ArtifactError when the calculator
    is built). ``distance``: ``"padded_l2"`` (the paper's), ``"histogram"`` or
    ``"band_fraction"``. ``radii``: candidate radii in Å, all within the native
    cutoff (default: ``n_radii`` values from 0.5 rc to rc); rc is always a candidate.
    ``centre``: move a chosen radius below rc to the middle of the interval of
    radii giving the same graph (default; see :func:`mlff_calc.rewiring.choose_radius`),
    so that moving atoms cross the sharp cut at ``r*`` as rarely as possible
    (CHGNet, M3GNet; MACE adapters switch edges off smoothly below ``r*`` over
    ``adapter.switch_width_A``, reported here as :attr:`switch_width_A` once bound).
    ``method``/``dense_max``/``spectrum_kwargs``: how spectra are computed (see
    :func:`mlff_calc.rewiring.spectrum_from_adjacency`).
    """

    name = "rewiring"
    provides = ("r_star", "rewiring_radii", "rewiring_distances")
    sets_cutoff = True

    @classmethod
    def from_option(cls, value: str, *, verb: str | None = None) -> "RewiringLayer":
        """The layer of ``--rewire REF.json[:DISTANCE]`` (the distance defaults to padded L2)."""
        from pathlib import Path

        text = str(value)
        head, sep, tail = text.rpartition(":")
        if sep and tail in DISTANCES:
            path, distance = Path(head), tail
        elif sep and not Path(text).exists() and "/" not in tail and "\\" not in tail:
            raise ConfigurationError(f"--rewire {text}: unknown spectral distance {tail!r}; use REF.json or REF.json:DISTANCE with DISTANCE one of {DISTANCES}")
        else:
            path, distance = Path(text), "padded_l2"
        return cls(SpectrumReference.load(path), distance=distance)

    def __init__(
        self,
        reference: SpectrumReference,
        distance: str = "padded_l2",
        radii=None,
        *,
        n_radii: int = DEFAULT_N_RADII,
        centre: bool = True,
        method: str = "auto",
        dense_max: int = DENSE_MAX,
        **spectrum_kwargs,
    ):
        if not isinstance(reference, SpectrumReference):
            raise ConfigurationError(f"RewiringLayer needs a SpectrumReference, not {type(reference).__name__}")
        if distance not in DISTANCES:
            raise ConfigurationError(f"unknown spectral distance {distance!r}; use one of {DISTANCES}")
        self.reference = reference
        self.distance = distance
        self.radii = candidate_radii(reference.cutoff, radii, n_radii)  # raises for radii beyond the native cutoff
        self.centre = bool(centre)
        self.method = method
        self.dense_max = int(dense_max)
        self.spectrum_kwargs = dict(spectrum_kwargs)
        self._choices: dict[str, RadiusChoice] = {}
        self._adapter = None
        #: how many times a radius was chosen (for tests and logs)
        self.n_refinements = 0

    def bind(self, adapter) -> None:
        self.reference.check(adapter)
        self._adapter = adapter
        if self.radii[-1] > adapter.cutoff + 1e-9:  # cannot happen once check passed; kept for clarity
            raise ConfigurationError(f"candidate radii reach {self.radii[-1]} Å, beyond the native cutoff {adapter.cutoff} Å")

    @property
    def switch_width_A(self) -> float | None:
        """The bound adapter's switch width below r* (Å): 0 for a sharp cut, None before bind."""
        if self._adapter is None:
            return None
        return float(getattr(self._adapter, "switch_width_A", 0.0))

    # choosing ------------------------------------------------------------------
    def refine(self, atoms) -> RadiusChoice:
        """Choose ``r*`` for ``atoms``' system now (replacing any earlier choice) and hold it."""
        if self._adapter is not None:  # the spectra need a valid structure: check it as the model would
            self._adapter.check(atoms, min_distance=None)
        choice = choose_radius(atoms, self.reference, distance=self.distance, radii=self.radii, centre=self.centre, method=self.method, dense_max=self.dense_max, **self.spectrum_kwargs)
        key = system_key(atoms)
        self._choices[key] = choice
        self.n_refinements += 1
        log.info("rewiring %s: r* = %.3f Å (%s distance %.4g; native %.3f Å)", key, choice.r_star, self.distance, choice.distances.min(), self.reference.cutoff)
        if choice.r_star < self.reference.cutoff and choice.gap[1] - choice.gap[0] < NARROW_GAP and not self.switch_width_A:
            log.warning(
                "rewiring %s: r* = %.3f Å lies within %.3f Å of neighbour distances; in MD or a relaxation pairs will cross it and the energy will jump there",
                key,
                choice.r_star,
                0.5 * (choice.gap[1] - choice.gap[0]),
            )
        return choice

    def choice(self, atoms) -> RadiusChoice | None:
        """The held choice for ``atoms``' system, or ``None`` before its first use."""
        return self._choices.get(system_key(atoms))

    def _choice(self, atoms) -> RadiusChoice:
        held = self._choices.get(system_key(atoms))
        return held if held is not None else self.refine(atoms)

    # hooks ---------------------------------------------------------------------
    def before(self, atoms_list, request: Request) -> Request:
        choices = [self._choice(atoms) for atoms in atoms_list]
        radii = {c.r_star for c in choices}
        if len(radii) > 1:
            detail = ", ".join(f"{system_key(a)}: {c.r_star:.3f} Å" for a, c in zip(atoms_list, choices))
            raise ConfigurationError(f"one batch needs one graph cutoff, but its systems have different refined radii ({detail}); evaluate them in separate calls")
        request.cutoff = radii.pop()  # the calculator lets only one layer set it
        return request

    def after(self, atoms_list, results: list[dict], request: Request) -> list[dict]:
        out = []
        for atoms, res in zip(atoms_list, results):
            c = self._choices[system_key(atoms)]
            out.append({**res, "r_star": c.r_star, "rewiring_radii": c.radii.copy(), "rewiring_distances": c.distances.copy()})
        return out

    def reset(self) -> None:
        self._choices.clear()

    def describe(self) -> dict:
        ref = self.reference
        return {
            "name": self.name,
            "distance": self.distance,
            "radii": self.radii.tolist(),
            "centre": self.centre,
            "switch_width_A": self.switch_width_A,
            "reference": ref.path or ref.source,
            "model_id": ref.model_id,
            "cutoff": ref.cutoff,
            "r_star": {k: c.r_star for k, c in self._choices.items()},
        }
