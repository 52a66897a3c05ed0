"""Names `load_model` accepts without a path. Torch-free, so `rattn-eval ls` stays instant."""

RANDOM_NAMES = ("debug",)
REAL_NAMES = ("smollm2-135m", "gemma3-270m")
# trained checkpoints shipped as package data (rattn_eval/checkpoints/<name>/)
SHIPPED_NAMES = ("tiny-rattn", "tiny-swa", "tiny-full")
BUILTIN_MODELS = (*RANDOM_NAMES, *REAL_NAMES, *SHIPPED_NAMES)
