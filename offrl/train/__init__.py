"""Training: the one loop (loop.py) and what offline, online (SAC) and fine-tuning runs feed it."""
