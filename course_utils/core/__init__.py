"""The core every lesson uses: GPU, VRAM estimator, safe defaults, OOM, seeding, paths, downloads, hub errors, plots."""
