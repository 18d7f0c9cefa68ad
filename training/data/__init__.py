"""Data: SynthAV world, dataset readers, noise injection."""
