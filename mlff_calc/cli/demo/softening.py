"""Section ``softening`` (with DFT data): measure and fit the correction."""

from __future__ import annotations

from pathlib import Path

from .framework import DemoContext, _f, print_table


def section_softening(ctx: DemoContext) -> dict:
    import math

    from ...plots import force_parity
    from ...softening import fit_scale, measure
    from ..options import load_calculator
    from ..softening import SUBTRACT, force_components, read_dataset

    args = ctx.args
    dataset = read_dataset(args)
    subtract = SUBTRACT[args.subtract_reference]
    bare = ctx.calc if not getattr(ctx.calc, "layers", None) else load_calculator(args, layers=False)
    report = measure(bare, dataset, subtract_reference=subtract)
    fit = fit_scale(bare, dataset, subtract_reference=subtract)
    fit_path = ctx.out_dir / "softening-fit.json"
    fit.save(fit_path)
    ctx.add_output("softening_fit", fit_path)
    fm, fd = force_components(bare, dataset, subtract)
    panels = {"model": fm, f"c × model (c = {fit.c:.3f})": fit.c * fm}
    ctx.add_output("softening_parity", force_parity(ctx.out_dir / "softening-parity.png", fd, panels, title=f"{fit.model_id} vs DFT, {fit.chemical_system}"))
    out = {
        "source": dataset.source,
        "n_structures": len(dataset),
        "chemical_system": fit.chemical_system,
        "s": report.pooled.s,
        "c": fit.c,
        "mae_eV_per_A": fit.mae,
        "mae_corrected_eV_per_A": fit.mae_corrected,
        "cmae_eV_per_A": fit.cmae,
        "frequency_scale": math.sqrt(fit.c),
        "subtract_reference": report.subtract_reference,
        "report": report.to_dict(),
    }
    rows = [[fit.chemical_system, len(dataset), fit.n_components, _f(out["s"], ".4f"), _f(fit.c, ".4f"), _f(fit.mae, ".5f"), _f(fit.mae_corrected, ".5f"), _f(fit.cmae, ".5f")]]
    source = Path(dataset.source.split(" + ")[0])
    print_table(f"Softening against {source.parent.name}/{source.name}", ["system", "structures", "components", "s", "c", "MAE (eV/Å)", "MAE with c", "cMAE"], rows)
    print(f"phonon frequencies of the corrected model scale by √c = {out['frequency_scale']:.3f}; apply the fit with --softening {fit_path}")
    return out
