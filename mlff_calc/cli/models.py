"""``mlff-calc models``: known names, where their weights are looked for, and a check that they load.

``mlff-calc models fetch NAME`` downloads published weights (the only command that downloads).
"""

from __future__ import annotations

HELP = "list known models, where their weights would be found, and verify them; 'fetch NAME' downloads weights"


def add_arguments(p) -> None:
    p.add_argument("--verify", action="store_true", help="load each available model and check its known-good energy")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    f = sub.add_parser("fetch", help="download a model's published weights into the model directory (sha256-checked)")
    f.add_argument("name", help="a known model name (see `mlff-calc models`)")
    f.add_argument("--model-dir", default=None, help="folder to write into (default: $MLFF_CALC_MODEL_DIR, else ~/.cache/mlff_calc/models)")
    f.add_argument("--sha256", default=None, help="expected sha256 of a one-file model whose hash mlff_calc does not know")
    f.add_argument("--force", action="store_true", help="download again even if the weights are present")
    f.set_defaults(_run=run_fetch)


def run_fetch(args) -> int:
    from ..models.fetch import fetch

    print(fetch(args.name, model_dir=args.model_dir, sha256=args.sha256, force=args.force))
    return 0


def run(args) -> int:
    from ..errors import MLFFError
    from ..models.registry import ALIASES, KNOWN_MODELS, locate, model_dirs

    print("model directories searched, in order: " + ", ".join(str(d) for d in model_dirs()))
    aliases = {v: k for k, v in ALIASES.items()}
    rows = []
    for name, spec in KNOWN_MODELS.items():
        where = "chgnet wheel" if spec.bundled else (str(locate(spec)) if locate(spec) else f"missing: {spec.filename} (mlff-calc models fetch {name})")
        status = ""
        if args.verify and (spec.bundled or locate(spec)):
            import mlff_calc

            try:
                mlff_calc.load(name, device="cpu")
                status = "ok" + (" (energy check passed)" if spec.check else "")
            except MLFFError as exc:
                status = f"FAILED: {exc}"
        label = f"{name} (alias {aliases[name]})" if name in aliases else name
        rows.append((label, spec.description, where, status))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    return 1 if any(r[3].startswith("FAILED") for r in rows) else 0
