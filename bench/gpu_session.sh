#!/usr/bin/env bash
# One GPU lease, one call: the CUDA-only tests, then the training benchmarks of issues 3 and 4.
# Logs and bench.jsonl go to $OUT (the device tool brings that folder back). Each part has its
# own time limit so a slow compile costs that part only. Usage, from the repository root:
#   PRETRAIN_COMMIT=$(git rev-parse --short HEAD) bash bench/gpu_session.sh
#   bash bench/gpu_session.sh clm_gpt2 80 ours,hf span_t5 130 ours,hf   # parts: NAME LIMIT SIDES
set -u
OUT=${OUT:-/tmp/pretrain-gpu}
mkdir -p "$OUT"
export PYTHONPATH=src:bench PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
    --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', \
transformers.__version__)" | tee -a "$OUT/gpu.txt"
BENCH="$PY bench/bench_train_gpu.py --json-out $OUT/bench.jsonl ${BENCH_ARGS:-}"  # e.g. BENCH_ARGS="--compile-scope model"
part() {  # part NAME SECONDS COMMAND...: run with a limit, keep the log, print its tail
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) ==="
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "exit $?"
    tail -n 14 "$OUT/$name.txt"
}
clm_gpt2() { part clm_gpt2 "${1:-120}" $BENCH --objective clm --sides "${2:-ours,ours_eagerloss,ours_chunk512,hf}" --loss-chunks 512; }
mlm_bert() { part mlm_bert "${1:-100}" $BENCH --objective mlm --sides "${2:-ours,ours_eagerloss,hf,hf_eager}"; }
span_t5() { part span_t5 "${1:-120}" $BENCH --objective span --sides "${2:-ours,ours_eagerloss,hf,hf_eager}"; }
pytest_gpu() { part pytest_gpu "${1:-90}" $PY -m pytest -v -rf --tb=short -m gpu tests/gpu -p no:cacheprovider; }
# -v: each test's name and outcome as it ends, so a part cut by its limit still says which failed
pytest_gpu_flex() { part pytest_gpu_flex "${1:-110}" $PY -m pytest -v -rf --tb=short -m gpu tests/gpu -k flex -p no:cacheprovider; }
pytest_gpu_sync() { part pytest_gpu_sync "${1:-60}" $PY -m pytest -v -rf --tb=short -m gpu tests/gpu -k "never_waits or broadcast_block_masks" -p no:cacheprovider; }
clm_llama() { part clm_llama "${1:-70}" $BENCH --objective clm --style llama --sides "${2:-ours,hf}"; }
# a mixture of experts (8 experts of width 2048, top 2, on llama style) against HF Mixtral
clm_moe() { part clm_moe "${1:-120}" $BENCH --objective clm --style llama --n-experts 8 --d-ff 2048 --sides "${2:-ours,hf}"; }
# XLNet: each side in its own process, so each peak is its own (HF eager needs ~71 GiB)
plm_xlnet() { part plm_xlnet "${1:-120}" $BENCH --objective plm --sides "${2:-ours}"; }
plm_xlnet_hf() { part plm_xlnet_hf "${1:-120}" $BENCH --objective plm --sides "${2:-hf_eager}"; }
plm_xlnet_hf_collator() { part plm_xlnet_hf_collator "${1:-120}" $BENCH --objective plm --sides "${2:-hf_eager_collator}"; }
plm_xlnet_rope_profile() { part plm_xlnet_rope_profile "${1:-150}" $BENCH --objective plm --attention-backend flex --position-encoding rope --steps 5 --warmup 3 --profile-steps 3 --sides "${2:-ours}"; }
plm_xlnet_rope_input() { part plm_xlnet_rope_input "${1:-120}" $BENCH --objective plm --attention-backend flex --position-encoding rope --flex-layout input --sides "${2:-ours}"; }
plm_xlnet_flex() { part plm_xlnet_flex "${1:-120}" $BENCH --objective plm --attention-backend flex --sides "${2:-ours}"; }
plm_xlnet_rope_budget() { part plm_xlnet_rope_budget "${1:-100}" $BENCH --objective plm --attention-backend flex --position-encoding rope --memory-budget 0.8 --sides "${2:-ours}"; }
plm_xlnet_flex_budget() { part plm_xlnet_flex_budget "${1:-120}" $BENCH --objective plm --attention-backend flex --memory-budget 0.8 --sides "${2:-ours}"; }
plm_xlnet_flex_input() { part plm_xlnet_flex_input "${1:-120}" $BENCH --objective plm --attention-backend flex --flex-layout input --sides "${2:-ours}"; }
plm_xlnet_rope_model() { part plm_xlnet_rope_model "${1:-120}" $BENCH --objective plm --attention-backend flex --position-encoding rope --compile-scope model --sides "${2:-ours}"; }
plm_xlnet_rope_cudagraphs() { part plm_xlnet_rope_cudagraphs "${1:-120}" $BENCH --objective plm --attention-backend flex --position-encoding rope --compile-mode reduce-overhead --sides "${2:-ours}"; }
plm_xlnet_rope() { part plm_xlnet_rope "${1:-120}" $BENCH --objective plm --attention-backend flex --position-encoding rope --sides "${2:-ours}"; }
span_t5_flex() { part span_t5_flex "${1:-120}" $BENCH --objective span --attention-backend flex --sides "${2:-ours}"; }
span_t5_profile() { part span_t5_profile "${1:-120}" $BENCH --objective span --steps 5 --warmup 3 --profile-steps 3 --sides "${2:-ours}"; }
clm_gpt2_profile() { part clm_gpt2_profile "${1:-90}" $BENCH --objective clm --steps 5 --warmup 3 --profile-steps 3 --sides "${2:-ours}"; }
mlm_bert_profile() { part mlm_bert_profile "${1:-90}" $BENCH --objective mlm --steps 5 --warmup 3 --profile-steps 3 --sides "${2:-ours}"; }
mlm_bert_cudagraphs() { part mlm_bert_cudagraphs "${1:-100}" $BENCH --objective mlm --compile-mode reduce-overhead --sides "${2:-ours}"; }
clm_gpt2_cudagraphs() { part clm_gpt2_cudagraphs "${1:-100}" $BENCH --objective clm --compile-mode reduce-overhead --sides "${2:-ours}"; }
span_t5_flex_cudagraphs() { part span_t5_flex_cudagraphs "${1:-150}" $BENCH --objective span --attention-backend flex --compile-mode reduce-overhead --sides "${2:-ours}"; }
clm_gpt2_autotune() { part clm_gpt2_autotune "${1:-240}" $BENCH --objective clm --compile-mode max-autotune-no-cudagraphs --sides "${2:-ours}"; }
mlm_bert_autotune() { part mlm_bert_autotune "${1:-240}" $BENCH --objective mlm --compile-mode max-autotune-no-cudagraphs --sides "${2:-ours}"; }
clm_gpt2_chunks() { part clm_gpt2_chunks "${1:-100}" $BENCH --objective clm --loss-chunks 8192,16384 --sides "${2:-ours,ours_chunk8192,ours_chunk16384}"; }
clm_gpt2_cudnn() { part clm_gpt2_cudnn "${1:-90}" $BENCH --objective clm --sdpa-backend cudnn --sides "${2:-ours}"; }
# the trainer's own loop (loader, objective on the host, step) at the benchmark's shape
train_loop_plm() { part train_loop_plm "${1:-150}" $PY bench/bench_train_loop.py --config configs/xlnet-plm.yaml --size base --seq-len 512 --batch 32 --steps 40 --work /tmp/train_loop -- --model.position_encoding=rope; }
train_loop_plm_worker() { part train_loop_plm_worker "${1:-150}" $PY bench/bench_train_loop.py --config configs/xlnet-plm.yaml --size base --seq-len 512 --batch 32 --steps 40 --work /tmp/train_loop -- --model.position_encoding=rope --data.batch_worker=process; }
train_loop_plm_cudagraphs() { part train_loop_plm_cudagraphs "${1:-180}" $PY bench/bench_train_loop.py --config configs/xlnet-plm.yaml --size base --seq-len 512 --batch 32 --steps 40 --work /tmp/train_loop -- --model.position_encoding=rope --train.compile_mode=reduce-overhead; }
train_loop_clm() { part train_loop_clm "${1:-120}" $PY bench/bench_train_loop.py --config configs/tiny-clm.yaml --size gpt2-small --seq-len 1024 --batch 16 --steps 60 --work /tmp/train_loop -- --objective.document_masking=false; }
train_loop_span() { part train_loop_span "${1:-150}" $PY bench/bench_train_loop.py --config configs/t5-span.yaml --size t5-v1_1-base --seq-len 512 --batch 32 --steps 40 --work /tmp/train_loop; }
# host time of the eager block masks, torch's create_block_mask against ours (queued, then synced)
block_masks() { part block_masks "${1:-60}" bash -c "$PY bench/bench_block_masks.py --device cuda && $PY bench/bench_block_masks.py --device cuda --sync"; }
clm_docs_flex() { part clm_docs_flex "${1:-35}" $BENCH --objective clm --doc-len 512 --attention-backend flex --sides ours; }
if [ $# -eq 0 ]; then  # the whole session; else the parts named, e.g. "clm_gpt2 80 ours,hf"
    clm_gpt2; mlm_bert; span_t5; pytest_gpu; clm_llama; clm_docs_flex
else
    while [ $# -gt 0 ]; do "$1" "$2" "$3"; shift 3; done
fi
ls -la "$OUT"
