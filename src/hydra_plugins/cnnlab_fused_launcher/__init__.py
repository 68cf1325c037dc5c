"""Hydra launcher `hydra/launcher=fused`: a sweep's jobs trained as one fused program (cnnlab.fused)."""
