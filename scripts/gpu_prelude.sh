# Sourced (from the repository root) by the one-call GPU scripts:  source scripts/gpu_prelude.sh NAME
# Makes W=/tmp/NAME afresh and packs everything under it into $OUT/NAME.tgz on exit (the device
# returns at most 8 files), installs the carried .whl/ wheels into /tmp/site, and sets PYTHONPATH
# with the Triton interpreter off. $W/env.txt gets the GPU list and the torch / triton versions.
W=/tmp/$1; rm -rf "$W"; mkdir -p "$W"
trap "tar czf \"\${OUT:-.}/$1.tgz\" -C $W ." EXIT
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site TRITON_INTERPRET=0
nvidia-smi -L > "$W/env.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$W/env.txt" 2>&1
