"""Noise-tolerant audio-visual action recognition (Han et al., IEEE TMM 2024, arXiv 2205.07611) and the
noisy-label baselines it is measured against (CE, GCE, SCE, Co-teaching), on one backbone and one budget.

- :mod:`training.noisy.losses`: the losses, tensors in and tensors out;
- :mod:`training.noisy.estimation`: the 2-component mixture, k-means, kNN label correction, ROC AUC;
- :mod:`training.noisy.arrays`: decoded clips as stacked arrays, batches of windows drawn from them;
- :mod:`training.noisy.methods`: the training routines (``METHODS``), one per method;
- :mod:`training.noisy.train`: ``train-action --method ntl``-style runs that write an exportable checkpoint.
"""
