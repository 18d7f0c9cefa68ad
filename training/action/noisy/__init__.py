"""Noise-tolerant audio-visual action recognition (Han et al., IEEE TMM 2024, arXiv 2205.07611) and the
noisy-label baselines it is measured against (CE, GCE, SCE, Co-teaching), on one backbone and one budget.

- :mod:`training.action.noisy.losses`: the losses, tensors in and tensors out;
- :mod:`training.action.noisy.estimation`: the whole-set pair InfoNCE, the 2-component mixture, k-means, kNN label
  correction, ROC AUC; torch on the model's device, tiled (memory O(N k), not O(N^2));
- :mod:`training.action.noisy.source`: what the methods ask of their clips (:class:`~.source.ClipSource`), met by
- :mod:`training.action.noisy.arrays`: decoded clips as stacked arrays, batches of windows drawn from them, and by
- :mod:`training.action.noisy.stream`: a prepared manifest's clips, streamed (windows decoded in DataLoader workers);
- :mod:`training.action.noisy.methods`: the training routines (``METHODS``), one per method;
- :mod:`training.action.noisy.train`: ``train-action --method ntl``-style runs that write an exportable checkpoint.
"""
