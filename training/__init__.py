"""Training package: the SynthAV world, datasets, models, losses, loops, export and evaluation."""
