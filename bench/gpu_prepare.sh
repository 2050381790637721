#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for bench/gpu.sh on a GPU machine that cannot fetch anything: the
# SmolLM2 tokenizer (weights are not carried: the GPU check builds random models of the same shapes)
# and wheels of the Python packages whose versions this project needs and the GPU image lacks or
# has older (transformers renamed the cache argument the engine passes). 64 MiB travel in all.
#
#   bash bench/gpu_prepare.sh        # then run bench/gpu.sh there with .gpu carried
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=.gpu
rm -rf "$OUT" && mkdir -p "$OUT/wheels" "$OUT/tokenizer"

MODEL=$($PY -c 'from lifecycle.settings import load_settings; from training.base_model import pull_default_model
print(pull_default_model(load_settings().models_dir, report=lambda m: None).path)')
for f in tokenizer.json tokenizer_config.json chat_template.jinja special_tokens_map.json config.json generation_config.json; do
  [ -f "$MODEL/$f" ] && cp "$MODEL/$f" "$OUT/tokenizer/"
done
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in transformers tokenizers huggingface_hub peft safetensors hf-xet; do
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT/wheels" "$pkg==$(version "$pkg")"
done
du -sh "$OUT"
