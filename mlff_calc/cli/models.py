"""``mlff-calc models``: known names, where their weights are looked for, and a check that they load."""

from __future__ import annotations

HELP = "list known models, where their weights would be found, and verify them"


def add_arguments(p) -> None:
    p.add_argument("--verify", action="store_true", help="load each available model and check its known-good energy")


def run(args) -> int:
    from ..errors import MLFFError
    from ..models.registry import ALIASES, KNOWN_MODELS, locate, model_dirs

    print("model directories searched, in order: " + ", ".join(str(d) for d in model_dirs()))
    aliases = {v: k for k, v in ALIASES.items()}
    rows = []
    for name, spec in KNOWN_MODELS.items():
        where = "chgnet wheel" if spec.bundled else (str(locate(spec)) if locate(spec) else f"missing: {spec.filename}")
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
