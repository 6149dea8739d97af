"""`loralint export`: an adapter merged into its base (Hugging Face folder), as GGUF, or as a GGUF LoRA."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..cli import UserError, app
from . import stderr


@app.command("export")
def export_command(
    target: str = typer.Argument(..., help="Adapter folder (PEFT: loralint's or LlamaFactory's), or, for --gguf "
                                           "alone, a base model: folder, hub id, .gguf or smollm2-135m."),
    merge: Optional[Path] = typer.Option(None, "--merge", "-m", help="Write the merged model to this folder "
                                         "(safetensors, tokenizer, chat template: transformers, vLLM, TGI)."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="Also write the merged model as GGUF of this type: "
                                       "f32, f16, bf16 or q8_0 (llama.cpp)."),
    gguf_out: Optional[Path] = typer.Option(None, "--gguf-out", help="Where the --gguf file goes (default: next to "
                                            "--merge DIR as DIR-TYPE.gguf, else ADAPTER/RULE-TYPE.gguf, where "
                                            "`scan --backend llamacpp` finds it)."),
    gguf_lora: Optional[Path] = typer.Option(None, "--gguf-lora", help="Write the adapter alone as a GGUF LoRA "
                                             "(llama.cpp --lora; many rules share one base GGUF)."),
    lora_type: str = typer.Option("f32", "--lora-type", help="Tensor type of the GGUF LoRA: f32, f16, bf16, q8_0."),
    gguf_base: Optional[Path] = typer.Option(None, "--gguf-base", help="Also write the base alone as GGUF (type "
                                             "--gguf, default f16): the file --gguf-lora adapters apply to."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: loralint.json's, else "
                                       "adapter_config.json's base_model_name_or_path)."),
    dtype: str = typer.Option("auto", "--dtype", help="Merged weights: auto (the base's), float32, bfloat16, float16."),
    tokenizer_pre: Optional[str] = typer.Option(None, "--tokenizer-pre", help="llama.cpp pre-tokenizer name, for "
                                                "tokenizers this exporter does not recognise (e.g. llama-bpe)."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Export an adapter: merged (--merge), merged as GGUF (--gguf), or as a GGUF LoRA (--gguf-lora).

    Examples:
      loralint export runs/predicate --merge out/predicate-merged --gguf q8_0
      loralint export runs/predicate --gguf-lora predicate.gguf --gguf-base base-f16.gguf
      loralint export smollm2-135m --gguf f16 --gguf-out base-f16.gguf
    """
    from ..export import ExportError, export

    try:
        report = export(target, merge_dir=merge, gguf=gguf, gguf_out=gguf_out, gguf_lora=gguf_lora,
                        lora_type=lora_type, gguf_base=gguf_base, base=base, dtype=dtype,
                        tokenizer_pre=tokenizer_pre,
                        progress=lambda m: stderr.print(f"[dim]{m}[/dim]", highlight=False))
    except ExportError as e:
        raise UserError(str(e)) from e
    for w in report.get("warnings", []):
        stderr.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    if report.get("merged"):
        stderr.print(f"merged model: {report['merged']}", highlight=False)
    for key, label in (("gguf", "GGUF"), ("gguf_base", "base GGUF"), ("gguf_lora", "GGUF LoRA")):
        if key in report:
            g = report[key]
            types = ", ".join(f"{n} {t}" for t, n in g["types"].items())
            stderr.print(f"{label}: {g['path']} ({g['arch']}, {g['tensors']} tensors: {types})", highlight=False)
