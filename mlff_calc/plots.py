"""PNG plots of workflow results, from plain arrays.

Every function builds its own matplotlib ``Figure`` on the Agg canvas (no pyplot,
so no global state and no display needed), writes the PNG atomically and returns
its path. matplotlib is imported inside the functions, so importing this module
is cheap. Units are those of the arguments' names: THz, eV, eV/Å, ps, K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .artifacts import atomic_path


def new_figure(width: float = 6.0, height: float = 4.5, dpi: int = 120):
    """A Figure attached to an Agg canvas, with matplotlib's constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def phonon_bands_dos(
    path,
    *,
    band_distances: Sequence[np.ndarray],
    band_frequencies_THz: Sequence[np.ndarray],
    ticks: Sequence[float],
    tick_labels: Sequence[str],
    dos_frequencies_THz: np.ndarray | None = None,
    dos_states_per_THz: np.ndarray | None = None,
    reference_band_frequencies_THz: Sequence[np.ndarray] | None = None,
    reference_dos: tuple[np.ndarray, np.ndarray] | None = None,
    label: str = "model",
    reference_label: str = "reference",
    title: str = "",
) -> Path:
    """Band structure (left) and total DOS (right); a reference is drawn dashed on the same path.

    ``band_frequencies_THz[k]`` is ``[n_q, n_bands]`` along segment ``k`` at ``band_distances[k]``.
    """
    fig = new_figure(7.5, 4.5)
    with_dos = dos_frequencies_THz is not None and dos_states_per_THz is not None
    if with_dos:
        grid = fig.add_gridspec(1, 2, width_ratios=(3, 1))
        ax = fig.add_subplot(grid[0])
        ax_dos = fig.add_subplot(grid[1], sharey=ax)
    else:
        ax, ax_dos = fig.add_subplot(), None
    _draw_bands(ax, band_distances, band_frequencies_THz, color="C0", lw=1.2, ls="-", label=label)
    if reference_band_frequencies_THz is not None:
        _draw_bands(ax, band_distances, reference_band_frequencies_THz, color="C3", lw=1.0, ls="--", label=reference_label)
    for x in ticks:
        ax.axvline(x, color="0.7", lw=0.6)
    ax.axhline(0.0, color="0.7", lw=0.6)
    ax.set_xticks(list(ticks), list(tick_labels))
    ax.set_xlim(band_distances[0][0], band_distances[-1][-1])
    ax.set_ylabel("frequency (THz)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    if ax_dos is not None:
        ax_dos.plot(dos_states_per_THz, dos_frequencies_THz, color="C0", lw=1.2)
        if reference_dos is not None:
            ax_dos.plot(reference_dos[1], reference_dos[0], color="C3", lw=1.0, ls="--")
        ax_dos.axhline(0.0, color="0.7", lw=0.6)
        ax_dos.set_xlabel("DOS (states/THz)")
        ax_dos.set_xlim(left=0.0)
        ax_dos.tick_params(labelleft=False)
    return save_png(fig, path)


def _draw_bands(ax, distances, frequencies, *, label: str, **style) -> None:
    for k, (d, f) in enumerate(zip(distances, frequencies)):
        lines = ax.plot(d, f, **style)
        if k == 0:
            lines[0].set_label(label)


def force_parity(path, dft_forces: np.ndarray, panels: Mapping[str, np.ndarray], *, title: str = "") -> Path:
    """Model against DFT force components (eV/Å), one panel per entry of ``panels``.

    Each panel shows the y = x line, the slope through the origin (``s``) and the MAE.
    """
    dft = np.ravel(np.asarray(dft_forces, dtype=float))
    fig = new_figure(4.2 * len(panels), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharex=True, sharey=True))
    lim = max(float(np.abs(dft).max(initial=0.0)), *(float(np.abs(m).max(initial=0.0)) for m in panels.values())) * 1.05 or 1.0
    for ax, (name, model) in zip(axes, panels.items()):
        model = np.ravel(np.asarray(model, dtype=float))
        s = float(model @ dft / (dft @ dft)) if dft @ dft > 0 else float("nan")
        mae = float(np.mean(np.abs(model - dft)))
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
        ax.scatter(dft, model, s=4, alpha=0.5, color="C0", edgecolors="none")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xlabel("DFT force (eV/Å)")
        ax.set_title(name, fontsize="medium")
        ax.text(0.04, 0.96, f"s = {s:.3f}\nMAE = {mae:.4f} eV/Å\nn = {model.size}", transform=ax.transAxes, va="top", fontsize="small")
    axes[0].set_ylabel("model force (eV/Å)")
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


def md_traces(
    path,
    *,
    time_ps: np.ndarray,
    energies_eV_per_atom: Mapping[str, np.ndarray],
    conserved_eV_per_atom: np.ndarray | None = None,
    temperature_K: np.ndarray | None = None,
    uncertainty: tuple[np.ndarray, np.ndarray, str] | None = None,
    title: str = "",
) -> Path:
    """Energy traces (eV/atom, shifted to their first value), the temperature and, when given, an uncertainty.

    ``conserved_eV_per_atom``: the conserved energy (E_tot in NVE), drawn on its own
    panel in meV/atom so that its drift is visible. ``uncertainty``: ``(time_ps, values,
    label)``, e.g. the largest predicted force uncertainty (eV/Å) of each trajectory frame.
    """
    n_panels = 1 + (conserved_eV_per_atom is not None) + (temperature_K is not None) + (uncertainty is not None)
    fig = new_figure(6.0, 2.2 + 1.6 * n_panels)
    axes = np.atleast_1d(fig.subplots(n_panels, 1, sharex=True))
    ax = axes[0]
    for name, values in energies_eV_per_atom.items():
        values = np.asarray(values, dtype=float)
        ax.plot(time_ps, values - values[0], label=name)
    ax.set_ylabel("E − E(0) (eV/atom)")
    ax.legend(fontsize="small")
    k = 1
    if conserved_eV_per_atom is not None:
        values = np.asarray(conserved_eV_per_atom, dtype=float)
        axes[k].plot(time_ps, 1e3 * (values - values[0]), color="C2")
        axes[k].set_ylabel("E_tot − E_tot(0)\n(meV/atom)")
        k += 1
    if temperature_K is not None:
        axes[k].plot(time_ps, temperature_K, color="C3")
        axes[k].set_ylabel("T (K)")
        k += 1
    if uncertainty is not None:
        t_u, values, label = uncertainty
        axes[k].plot(t_u, values, color="C4")
        axes[k].set_ylabel(label)
    axes[-1].set_xlabel("time (ps)")
    if title:
        axes[0].set_title(title)
    return save_png(fig, path)


def eos_curves(
    path,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    references: Mapping[str, tuple[str, np.ndarray, np.ndarray]] | None = None,
    title: str = "",
) -> Path:
    """Several E(V) curves per atom on one plot, each shifted to its minimum.

    ``curves[name] = (volumes_A3_per_atom, energies_eV_per_atom, fit_volumes, fit_energies)``.
    ``references[name] = (label, volumes_A3_per_atom, energies_eV_per_atom)``: e.g. a
    PBE equation of state of the same crystal, drawn dashed in the colour of ``curves[name]``.
    """
    fig = new_figure(5.5, 4.2)
    ax = fig.add_subplot()
    for k, (name, (v, e, v_fit, e_fit)) in enumerate(curves.items()):
        e_min = float(np.min(e_fit))
        ax.plot(v_fit, np.asarray(e_fit) - e_min, "-", color=f"C{k}", label=name)
        ax.plot(v, np.asarray(e) - e_min, "o", color=f"C{k}", ms=4)
    colours = {name: f"C{k}" for k, name in enumerate(curves)}
    for name, (label, v, e) in (references or {}).items():
        ax.plot(v, np.asarray(e) - float(np.min(e)), "--", color=colours.get(name, "0.4"), lw=1.0, label=label)
    ax.set_xlabel("volume (Å³/atom)")
    ax.set_ylabel("E − E0 (eV/atom)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_png(fig, path)


__all__ = ["new_figure", "save_png", "phonon_bands_dos", "force_parity", "md_traces", "eos_curves"]


def loss_curve(path, losses: Sequence[float], *, title: str = "", ylabel: str = "loss") -> Path:
    """One loss per step on a log scale (e.g. the prior loss of test-time training)."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return save_png(fig, path)
