#!/usr/bin/env bash
# The GPU check: the device tests, the whole pipeline at small size on the GPU, and every figure of merit.
#
#   bash benchmarks/gpu_check.sh                         # on a CUDA machine (estimated 8-10 minutes on one H200; not run on one yet)
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh    # the same steps at tiny size on the CPU (the suite runs it)
#   GPU_CHECK_PARTS="tests merit" bash benchmarks/gpu_check.sh   # only some parts: machine, tests, pipeline, merit
#
# Where torch-lucent is not installed (a lent machine without network), it installs the wheels of .whl/ (made by
# benchmarks/gpu_wheels.sh) into .gpu_pkgs/ for the lucent comparison. Every step runs even when one before failed;
# the last line says which failed, and the exit status is 1 if any did.
set -uo pipefail
cd "$(dirname "$0")/.."
DEV="${GPU_CHECK_DEVICE:-cuda}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d)}"
export PYTHONUNBUFFERED=1
if [ "$DEV" = cuda ]; then  # small for a GPU
  CH=64; STEPS=256; FAKE=2000; SWEEP_LAYERS=all; SWEEP_STEPS=16; BENCH_CH=4; BENCH_STEPS=256; PREC_CH=32; PREC_STEPS=128
  ABLATE_FAKE=10000; PYTEST_FILES="tests/test_device.py tests/test_fzs.py tests/test_stream.py tests/test_criteria.py tests/test_ablate.py"
else  # tiny, for the CPU: the same steps, so that the check cannot rot before a GPU shows up
  CH=2; STEPS=2; FAKE=8; SWEEP_LAYERS=layer1.0,layer4.1; SWEEP_STEPS=2; BENCH_CH=1; BENCH_STEPS=2; PREC_CH=1; PREC_STEPS=1
  ABLATE_FAKE=8  # the device tests that run in this process: the suite runs all of test_device.py anyway, and the two
  # deselected ones only launch the scripts again (seconds of imports each)
  PYTEST_FILES="tests/test_device.py --deselect tests/test_device.py::test_each_script_starts_on_a_faked_gpu
    --deselect tests/test_device.py::test_fzs_torchrun_with_too_many_ranks_stops_before_the_rendezvous"
fi
PARTS="${GPU_CHECK_PARTS:-machine tests pipeline merit}"
failed=()
step() {  # step "part: what" command...: runs when its part is asked for; a failure is noted and the check goes on
  case " $PARTS " in *" ${1%%:*} "*) ;; *) return 0 ;; esac
  echo; echo "== $1"; shift; "$@" || { failed+=("$*"); echo "FAILED: $*"; }
}

if ! python -c "import lucent" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  pip install -q --no-deps --no-index --target .gpu_pkgs .whl/*.whl && export PYTHONPATH="$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}"
fi

step "machine: versions, device, precision" python - "$DEV" <<'EOF'
import sys, torch, torchvision, cli
device = cli.pick_device(sys.argv[1])
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, device {cli.use_device(device, 'fp32')}")
if device.type == "cuda":
    free, total = torch.cuda.mem_get_info(device)
    print(f"bf16 supported: {torch.cuda.is_bf16_supported()}; memory {free / 2**30:.0f} of {total / 2**30:.0f} GiB free; "
          f"capability {torch.cuda.get_device_capability(device)}")
print(f"--amp auto means {cli.precision('auto', device)} here")
EOF
step "tests: pytest --device $DEV" python -m pytest -q -p no:cacheprovider --device "$DEV" $PYTEST_FILES

R="$OUT/pipeline"; W=(--weights random --results "$R" --device "$DEV")
step "pipeline: fzs.py" python fzs.py "${W[@]}" --layers 2.1,3.1 --channels "0:$CH" --batch "$CH" --steps "$STEPS" --objectives center,channel --png false
step "pipeline: criteria.py" python criteria.py "${W[@]}" --blocks 2.1,3.1
step "pipeline: ablate.py" python ablate.py "${W[@]}" --data "$OUT/val" --fake "$FAKE" --sets "2.1:0:2;3.1:0:2" \
  --screen_margin "2.1:<=100;3.1:<=100" --n_trials 2 --bootstrap 100
step "pipeline: tuning.py" python tuning.py "${W[@]}" --tune_blocks 2.1,3.1 --top_k 4 --sample 4
for plot in plot_grids.py plot_ratios.py plot_spectrum.py plot_tuning.py; do
  step "pipeline: $plot" python "$plot" --results "$R"
done

# CORnet-S: its FZs, criteria and natural stage at the reference step, and the latency stage (on the CPU: V2 only)
C="$OUT/cornet"; CW=(--arch cornet_s --weights random --results "$C" --device "$DEV")
if [ "$DEV" = cuda ]; then CORNET_BLOCKS=V2.0,V4.0,IT.0; CORNET_AREAS=V2,V4,IT; else CORNET_BLOCKS=V2.0; CORNET_AREAS=V2; fi
step "pipeline: cornet_s fzs.py" python fzs.py "${CW[@]}" --layers "$CORNET_BLOCKS" --channels "0:$CH" --batch "$CH" --steps "$STEPS" --png false
step "pipeline: cornet_s criteria.py" python criteria.py "${CW[@]}" --blocks "$CORNET_BLOCKS"
step "pipeline: cornet_s ablate.py --stages natural" python ablate.py "${CW[@]}" --stages natural --data "$OUT/val_cornet" --fake "$FAKE"
step "pipeline: cornet_s latency.py" python latency.py --results "$C" --device "$DEV" --areas "$CORNET_AREAS" --top_k 4 --permutations 100
step "pipeline: cornet_s plot_latency.py" python plot_latency.py --results "$C"

step "merit: FZ engine against lucent's loop (bench_fzs.py)" python benchmarks/bench_fzs.py --device "$DEV" \
  --channels "$BENCH_CH" --steps "$BENCH_STEPS" --amps fp32,bf16
step "merit: the sweep by layer, projected; host syncs per step (bench_sweep.py)" python benchmarks/bench_sweep.py \
  --device "$DEV" --layers "$SWEEP_LAYERS" --steps "$SWEEP_STEPS" $([ "$DEV" = cuda ] || echo --batch 2 --streams 1,2)
step "merit: ablation, decode and compute apart (bench_ablate.py)" python benchmarks/bench_ablate.py --device "$DEV" \
  --fake "$ABLATE_FAKE" --fake_dir "$OUT/jpegs" --limit 0 --reference false $([ "$DEV" = cuda ] && echo --workers 16)
step "merit: CORnet-S's FZ rate against resnet18's, projected (bench_archs.py)" python benchmarks/bench_archs.py --device "$DEV" \
  --archs resnet18,cornet_s $([ "$DEV" = cuda ] && echo --batch 64 --steps 16 || echo --batch 1 --steps 1)
step "merit: criteria.py on all seven blocks" python benchmarks/bench_criteria.py --device "$DEV" \
  $([ "$DEV" = cuda ] || echo --channels 1 --steps 1)
step "merit: precision, fp32 / bf16 (and tf32 on a GPU) against seed noise (bench_precision.py)" \
  python benchmarks/bench_precision.py --device "$DEV" --channels "$PREC_CH" --steps "$PREC_STEPS" --fake "$FAKE" $([ "$DEV" = cuda ] || echo --blocks 2.1)

echo
if [ ${#failed[@]} -eq 0 ]; then
  echo "gpu_check ($DEV): every step passed"
else
  echo "gpu_check ($DEV): ${#failed[@]} step(s) failed: ${failed[*]}"
  exit 1
fi
