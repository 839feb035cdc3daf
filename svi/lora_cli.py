"""svi-lora: inspect a Wan LoRA file and convert it between the diffusers, DiffSynth and ComfyUI key formats.

    svi-lora info outputs/run/adapter                       # format, rank, alpha, modules, expert, model size
    svi-lora convert outputs/run/adapter svi-mine.safetensors --to diffsynth      # the official SVI layout
    svi-lora convert svi-shot.safetensors svi-shot-comfy.safetensors --to comfyui
    svi-lora convert svi-shot.safetensors adapter_dir --to diffusers             # our adapter directory
    svi-lora convert both.safetensors low.safetensors --to diffsynth --expert low   # one Wan 2.2 expert

The input format is detected from the keys (`svi.backbones.official.detect_format`). The conversion is
a renaming: A and B are copied, except that DiffSynth files carry no alpha, so a scale alpha / r other
than 1 is folded into B there. Only the wiring lives here.
"""

from __future__ import annotations

import argparse
import sys

from svi.backbones.official import EXPERTS, FORMATS, _read_tensors, convert_lora_file, read_lora


def _number(x: float):
    x = round(x, 6)
    return int(x) if float(x).is_integer() else x


def info(path: str, expert: str | None = None) -> str:
    """The lines `svi-lora info` prints."""
    sd, metadata, file, _ = _read_tensors(path)
    experts = [name for prefix, name in (("transformer.", "high"), ("transformer_2.", "low"))
               if any(k.startswith(prefix) for k in sd)]
    if expert is None and len(experts) == 2:
        expert = "high"  # describe one expert; both are listed below
    weights = read_lora(path, expert)
    ranks = sorted({a.shape[0] for a, _, _ in weights.modules.values()})
    alphas = sorted({_number(s * a.shape[0]) for a, _, s in weights.modules.values()})
    has_alpha = weights.format == "comfyui" or (metadata or {}).get("lora_adapter_metadata")
    lines = [f"file: {file}",
             f"format: {weights.format}",
             f"rank: {ranks[0] if len(ranks) == 1 else ranks}",
             f"alpha: {alphas[0] if len(alphas) == 1 else alphas}"
             + ("" if has_alpha else " (no alpha in the file: scale 1, as the official SVI loader merges)"),
             f"modules: {len(weights.modules)}",
             f"model: {weights.describe()}"]
    if len(experts) == 2:
        lines.append(f"experts: high (transformer.) and low (transformer_2.); shown: {expert}")
    else:
        lines.append(f"expert: {weights.expert or 'not stated (one transformer)'}")
    prefixes = sorted({k.split(".")[0] + "." for k in sd if not k.startswith("blocks.")} & {
        "transformer.", "transformer_2.", "diffusion_model.", "pipe."})
    lines.append(f"key prefix: {', '.join(prefixes) or 'none'}")
    if weights.extras:
        lines.append(f"non-LoRA tensors: {len(weights.extras)} (e.g. {sorted(weights.extras)[:3]})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svi-lora", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="print the format, rank, alpha, modules and expert of a LoRA file")
    p_info.add_argument("file")
    p_info.add_argument("--expert", choices=EXPERTS, default=None,
                        help="which Wan 2.2 expert to describe when the file holds both")
    p_conv = sub.add_parser("convert", help="write a LoRA in another key format")
    p_conv.add_argument("input", help="a LoRA file in any of the formats, or our adapter directory")
    p_conv.add_argument("output", help="a .safetensors file (or, with --to diffusers, a directory)")
    p_conv.add_argument("--to", required=True, choices=FORMATS)
    p_conv.add_argument("--expert", choices=EXPERTS, default=None,
                        help="Wan 2.2 A14B: convert the high-noise (transformer.) or low-noise (transformer_2.) "
                             "expert; recorded in the output header")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(info(args.file, args.expert))
        else:
            for path in convert_lora_file(args.input, args.output, args.to, args.expert):
                print(f"wrote {path}")
            print(info(str(args.output), args.expert))
    except (ValueError, FileNotFoundError) as err:
        print(f"svi-lora: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
