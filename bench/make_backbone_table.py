"""Write ``specs/backbones.json``: shapes, parameters and MACs of common timm backbones, and timm's names.

Uses timm with random weights (no network) through ``convspec.compiler.model.backbone.probe``: for
each name, 1 and 3 input channels, parameters per stage, the feature map's stride and rounding,
the head-only modules, MACs at 224x224, and timm's pretrained mean/std. The file also lists
``timm.list_models()`` so that ``convspec validate`` checks other names without importing torch.
``tests/compiler/test_backbone.py`` checks the table against timm.

    python bench/make_backbone_table.py [--out specs/backbones.json] [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "convnext_atto",
    "regnety_002",
]
REF_SIZE = (224, 224)
PROBE_SIZE = (64, 64)  # shapes and head modules are found at this size (fast); MACs at REF_SIZE


def entry(name: str) -> dict:
    """One row of the table (both channel counts)."""
    import torch

    from convspec.compiler.model.backbone import probe

    torch.manual_seed(0)
    rgb = probe(name, 3, PROBE_SIZE, REF_SIZE)
    grey = probe(name, 1, PROBE_SIZE, REF_SIZE)
    assert (rgb.reduction, rgb.rounding) == (grey.reduction, grey.rounding), name
    assert rgb.rounding is not None, f"{name}: neither ceil nor floor of size / stride fits its feature map"
    return {
        "pooled_channels": rgb.pooled_channels,
        "feature_channels": rgb.feature_channels,
        "reduction": rgb.reduction,
        "rounding": rgb.rounding,
        "stage_params": {"1": grey.stage_params[1], "3": rgb.stage_params[3]},
        "head_params": rgb.head_params,
        "head_modules": list(rgb.head_modules),
        "macs": {"1": grey.macs[1], "3": rgb.macs[3]},
        "head_macs": rgb.head_macs,
        "macs_size": list(REF_SIZE),
        "mean": list(rgb.mean) if rgb.mean else None,
        "std": list(rgb.std) if rgb.std else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=NAMES)
    ap.add_argument("--out", type=Path, default=REPO / "specs" / "backbones.json")
    args = ap.parse_args(argv)
    import timm

    from convspec.runtime.files import atomic_write_text

    rows = {}
    for name in args.names:
        rows[name] = entry(name)
        print(
            f"{name}: {sum(rows[name]['stage_params']['3']):,} parameters, {rows[name]['macs']['3']:,} MACs", flush=True
        )
    data = {"timm_version": timm.__version__, "backbones": rows, "timm_names": sorted(timm.list_models())}
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
