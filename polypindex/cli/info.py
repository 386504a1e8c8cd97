"""``polypindex info MODEL``: what an exported encoder is and how this machine runs it.

Reads the ONNX metadata (identity, crop and fragment settings, embedding size, how it
was trained — the training precision among it —, calibration, reference embeddings),
then loads it the way the service would (``POLYPINDEX_RUNTIME`` /
``POLYPINDEX_PRECISION``, :func:`polypindex.model.runtime.loader.layout_encoder`) and reports
the runtime chosen and its parity check (docs/runtimes.md#one-identity-per-model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from polypindex.cli.options import HomeOpt, layout


def model_info(path: Path, home: Path | None = None) -> dict[str, Any]:
    """The facts ``polypindex info`` prints, as a JSON-ready dict."""
    from polypindex.model.runtime.base import META_PREFIX
    from polypindex.model.runtime.loader import cpu_flags, layout_encoder

    lay = layout(home=home, model=path)
    encoder = layout_encoder(lay, path)
    meta = encoder.metadata

    def parsed(key: str) -> Any:
        raw = meta.get(META_PREFIX + key)
        return None if raw is None else json.loads(raw)

    calibration = encoder.reid_calibration
    return {
        "path": str(path),
        "encoder_version": encoder.version,
        "model_precision": encoder.model_precision,
        "embedding_dim": encoder.dim,
        "preprocess": encoder.preprocess.to_dict(),
        "fragment": encoder.fragment.to_dict(),
        "encoder_config": encoder.encoder_config,
        "training": parsed("training") or {"precision": "unknown"},
        "reid_threshold": encoder.reid_threshold,
        "calibrated": calibration is not None,
        "reference_embeddings": encoder.reference is not None,
        "runtime_here": {
            **encoder.describe(),
            "asked": {"runtime": lay.runtime, "precision": lay.precision},
            "bf16_cpu_flags": sorted(f for f in cpu_flags() if "bf16" in f),
        },
    }


def info(
    model: Annotated[Path, typer.Argument(help="The exported encoder (.onnx).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    home: HomeOpt = None,
) -> None:
    """Describe an exported encoder: its version, settings, training precision, and the
    runtime and precision this machine serves it with (after the parity check)."""
    facts = model_info(model, home)
    if as_json:
        typer.echo(json.dumps(facts, indent=2, default=str))
        return
    here = facts["runtime_here"]
    parity = here.get("parity", {})
    training = facts["training"]
    lines = [
        f"model            {facts['path']}",
        f"encoder version  {facts['encoder_version']} (the same on every runtime and CPU)",
        f"weights          {facts['model_precision']}, embedding dim {facts['embedding_dim']}",
        f"trained          precision {training.get('precision')}"
        + (f", preset {training['config_name']}" if "config_name" in training else "")
        + (f", seed {training['seed']}" if "seed" in training else ""),
        f"crop             {facts['preprocess']}",
        f"calibrated       {'yes' if facts['calibrated'] else 'no'} "
        f"(re-ID threshold {facts['reid_threshold']:.3f})",
        f"runtime here     {here['runtime']} ({here['provider']}), {here['precision']}"
        f" (asked {here['asked']['runtime']}/{here['asked']['precision']})",
        f"parity           min cosine {parity.get('min_cosine')} vs reference "
        f"({parity.get('reference')}), threshold {parity.get('threshold')}",
    ]
    if here.get("fallback_reason"):
        lines.append(f"fallback         {here['fallback_reason']}")
    typer.echo("\n".join(lines))


def register(app: typer.Typer) -> None:
    app.command("info")(info)
