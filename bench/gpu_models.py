"""Random Llama models of real shapes with the carried SmolLM2 tokenizer, for bench/gpu.sh (the GPU
machine cannot download weights; speed depends on shapes, not on the weights' values).

    python bench/gpu_models.py TOKENIZER_DIR OUT_DIR [smol|1b|tiny ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {
    # SmolLM2-135M: 30 layers, 576 wide, 9 heads (3 KV), MLP 1536.
    "smol": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "tie_word_embeddings": True},
    # Llama-3.2-1B's body (16 layers, 2048 wide, 32 heads (8 KV), MLP 8192) on SmolLM2's vocabulary.
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": True},
}  # fmt: skip


def build(tokenizer_dir: Path, out: Path, shape: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPES[shape])  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    (out / "shape.json").write_text(json.dumps({"shape": shape, "parameters": params}))
    print(f"{shape}: {params / 1e6:.0f}M parameters -> {out}", flush=True)
    return out


if __name__ == "__main__":
    tokenizer_dir, root = Path(sys.argv[1]), Path(sys.argv[2])
    for name in sys.argv[3:] or ["smol", "1b"]:
        build(tokenizer_dir, root / name, name)
