import os

# Before anything in ml/ imports torch, which reads it once: on Apple's GPU, ops without a Metal
# kernel fall back to the CPU instead of failing the run (see ml/device.py). No effect elsewhere.
os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
