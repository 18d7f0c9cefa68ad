"""Noise injection, the noisy-label losses on hand-checked tensors, the estimation helpers, and a short run in
which cross-modal noise estimation finds planted mismatched pairs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_store.manifest import ClipSpec
from training.action.noisy import estimation as est
from training.action.noisy.arrays import ArraySet, eval_windows, window_batch
from training.action.noisy.losses import (
    cross_modal_nce,
    gce_loss,
    hybrid_targets,
    prototype_nce,
    sce_loss,
    soft_cross_entropy,
    weighted_mean,
)
from training.data.datasets import ClipData
from training.data.noise import (
    apply_noise,
    asymmetric_label_noise,
    correspondence_noise,
    make_noise,
    pair_map,
    symmetric_label_noise,
)

# ------------------------------------------------------------------------------------------ noise injection


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6])
def test_symmetric_noise_rate_and_indices(rate):
    clean = np.arange(1000) % 8
    noisy, idx = symmetric_label_noise(clean, rate, 8, np.random.default_rng(0))
    assert len(idx) == round(rate * 1000)
    np.testing.assert_array_equal(idx, np.flatnonzero(noisy != clean))  # recorded == actually changed
    assert noisy.min() >= 0 and noisy.max() < 8
    if rate:  # wrong labels spread over all the other classes
        assert len(np.unique(noisy[idx] - clean[idx])) > 5


def test_asymmetric_noise_flips_class_pairs_per_class():
    clean = np.repeat(np.arange(8), 50)
    noisy, idx = asymmetric_label_noise(clean, 0.4, 8, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, np.flatnonzero(noisy != clean))
    np.testing.assert_array_equal(noisy[idx], pair_map(8)[clean[idx]])
    for k in range(8):
        assert (noisy[clean == k] != k).sum() == 20
    assert list(pair_map(8)) == [1, 0, 3, 2, 5, 4, 7, 6]


def test_correspondence_noise_is_a_derangement_of_the_chosen_clips():
    source, idx = correspondence_noise(500, 0.2, np.random.default_rng(2))
    assert len(idx) == 100
    np.testing.assert_array_equal(idx, np.flatnonzero(source != np.arange(500)))
    assert sorted(source[idx]) == sorted(idx)  # audio moves only among the corrupted clips


def test_make_noise_is_deterministic_and_independent():
    clean = np.arange(200) % 8
    a = make_noise(clean, 8, 0.4, "sym", 0.2, seed=3)
    b = make_noise(clean, 8, 0.4, "sym", 0.2, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.audio_source, b.audio_source)
    assert a.summary()["label_noise_measured"] == pytest.approx(0.4)
    assert a.summary()["corr_noise_measured"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        make_noise(clean, 8, 1.5, "sym")


def test_apply_noise_swaps_audio_and_keeps_the_truth():
    clips = [ClipData(np.full((4, 2, 2, 3), i, np.uint8), np.full(10, float(i), np.float32), 4.0, i % 8)
             for i in range(10)]
    report = make_noise([c.label for c in clips], 8, 0.3, "sym", 0.4, seed=0)
    noisy = apply_noise(clips, report)
    for i, (c, n) in enumerate(zip(clips, noisy, strict=True)):
        assert n.label == report.labels[i] and n.extra["clean_label"] == c.label
        assert n.audio[0] == report.audio_source[i]  # the audio is that of the recorded source clip
        np.testing.assert_array_equal(n.frames, c.frames)
    assert sum(n.audio[0] != i for i, n in enumerate(noisy)) == 4
    assert clips[report.corr_noisy[0]].audio[0] == report.corr_noisy[0]  # originals untouched


# ------------------------------------------------------------------------------------------------------ losses


def test_cross_modal_nce_hand_checked():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # aligned pairs, tau = 1: logits [[1, 0], [0, 1]] -> -log(e / (e + 1)) for both directions
    np.testing.assert_allclose(cross_modal_nce(v, v.clone(), tau=1.0).numpy(), [math.log(1 + math.exp(-1))] * 2,
                               rtol=1e-6)
    # swapped audio: the positive scores 0, the negative 1 -> -log(1 / (1 + e))
    np.testing.assert_allclose(cross_modal_nce(v, v.flip(0), tau=1.0).numpy(), [math.log(1 + math.e)] * 2,
                               rtol=1e-6)
    # norms do not matter
    np.testing.assert_allclose(cross_modal_nce(3 * v, v, 1.0).numpy(), cross_modal_nce(v, v, 1.0).numpy())


def test_prototype_nce_hand_checked():
    v = torch.tensor([[1.0, 0.0]])
    a = torch.tensor([[0.0, 1.0]])
    protos = torch.eye(2)
    # video picks cluster 0 among audio prototypes (logits [1, 0]); audio picks it among video prototypes
    # (logits [0, 1]) -> mean of log(1 + e^-1) and log(1 + e)
    got = prototype_nce(v, a, protos, protos, torch.tensor([0]), tau=1.0)
    want = 0.5 * (math.log(1 + math.exp(-1)) + math.log(1 + math.e))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_gce_and_sce_hand_checked():
    logits = torch.zeros(1, 4)  # uniform: p_y = 0.25
    y = torch.tensor([2])
    assert gce_loss(logits, y, q=0.7).item() == pytest.approx((1 - 0.25**0.7) / 0.7, rel=1e-6)
    assert sce_loss(logits, y, alpha=0.1, beta=1.0).item() == pytest.approx(0.1 * math.log(4) + 4 * 0.75, rel=1e-6)
    # GCE tends to CE as q -> 0
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([0])
    assert gce_loss(logits, y, q=1e-4).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)


def test_soft_ce_hybrid_targets_and_weighted_mean():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]])
    y = torch.tensor([1, 0])
    one_hot = F.one_hot(y, 3).float()
    np.testing.assert_allclose(soft_cross_entropy(logits, one_hot).numpy(),
                               F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-6)
    t = hybrid_targets(torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([0.2, 0.9]),
                       torch.tensor([0.6, 0.9]), 3)
    # p on the given label, (1 - p) q on the corrected one; where they agree the weights add up
    np.testing.assert_allclose(t.numpy(), [[0.2, 0.48, 0.0], [0.0, 0.0, 0.99]], rtol=1e-6)
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0])).item() == 1.0
    assert weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item() == 0.0


# -------------------------------------------------------------------------------------------------- estimation


def test_roc_auc_hand_checked():
    assert est.roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]).bool()) == 0.75
    assert est.roc_auc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1]).bool()) == 0.5  # ties count half
    assert math.isnan(est.roc_auc(torch.ones(3), torch.zeros(3, dtype=torch.bool)))


def test_gmm_separates_two_loss_modes():
    rng = np.random.default_rng(0)
    losses = torch.from_numpy(np.concatenate([rng.normal(0.5, 0.1, 300), rng.normal(2.0, 0.2, 100)]))
    p = est.gmm_clean_probability(losses)
    assert p[:300].mean() > 0.95 and p[300:].mean() < 0.05
    assert torch.all(est.gmm_clean_probability(torch.ones(5)) == 1.0)


def test_label_trust_doubts_only_labels_below_chance():
    rng = np.random.default_rng(0)
    # 8 classes, chance loss log 8 = 2.08: wrong labels the classifier has not memorised lie above it
    noisy = torch.from_numpy(np.concatenate([rng.gamma(2.0, 0.05, 300), rng.normal(4.0, 0.5, 200)]))
    t = est.label_trust(noisy, 8)
    assert set(t.unique().tolist()) == {0.0, 1.0}
    assert t[:300].mean() > 0.98 and t[300:].mean() < 0.02
    soft = est.label_trust(noisy, 8, hard=False)
    assert 0 <= soft.min() and soft.max() <= 1 and soft[300:].mean() < 0.05 and len(soft.unique()) > 2
    # clean labels: the mixture still splits the losses (a small tail of harder clips), the guard keeps them
    clean = torch.from_numpy(np.concatenate([rng.gamma(2.0, 0.05, 450), rng.normal(0.9, 0.2, 50)]))
    assert (est.gmm_clean_probability(clean) < 0.5).sum() >= 40
    assert torch.all(est.label_trust(clean, 8) == 1.0)
    assert (est.label_trust(clean, 8, chance_guard=False) == 0.0).sum() >= 40
    # a class learned late: its right labels still lose 2.5-3.5; one mixture over all clips doubts it whole,
    # one mixture per class finds its wrong labels (loss ~6) and keeps its right ones
    late = torch.from_numpy(np.concatenate([rng.gamma(2.0, 0.05, 300), rng.uniform(2.5, 3.5, 60),
                                            rng.normal(6.0, 0.3, 40)]))
    groups = torch.from_numpy(np.repeat([0, 1, 1], [300, 60, 40]))
    assert torch.all(est.label_trust(late, 8)[300:] == 0.0)
    per = est.label_trust(late, 8, groups=groups)
    assert torch.all(per[:360] == 1.0) and torch.all(per[360:] == 0.0)


def test_knn_votes_correct_wrong_labels_in_clustered_features():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 5
    clean = np.repeat(np.arange(4), 50)
    feats = torch.from_numpy(centres[clean] + rng.normal(0, 1, (200, 4)))
    noisy, idx = symmetric_label_noise(clean, 0.4, 4, rng)
    corrected, q, t = est.corrected_labels(est.knn_label_votes(feats, torch.from_numpy(noisy), 4, k=15),
                                           torch.from_numpy(noisy))
    corrected = corrected.numpy()
    assert (corrected == clean).mean() > 0.95
    assert (corrected[idx] == clean[idx]).mean() > 0.9
    assert torch.all(q >= t)
    centroids, assign = est.kmeans(feats, 4, seed=0)
    assert len(assign.unique()) == 4 and centroids.shape == (4, 4)


# ------------------------------------------------------------- chunked torch estimation against dense references


def _np_gmm(losses: np.ndarray, iters: int = 50, eps: float = 1e-6) -> np.ndarray:
    """The numpy mixture the torch one replaced, kept as the reference."""
    x = losses.astype(np.float64)
    x = (x - x.min()) / np.ptp(x)
    mu = np.quantile(x, [0.25, 0.75])
    var = np.full(2, x.var() / 4 + eps)
    pi = np.array([0.5, 0.5])
    for _ in range(iters):
        log_p = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(2 * np.pi * var) + np.log(pi)
        log_p -= log_p.max(1, keepdims=True)
        r = np.exp(log_p)
        r /= r.sum(1, keepdims=True)
        nk = r.sum(0) + 1e-12
        mu = (r * x[:, None]).sum(0) / nk
        var = (r * (x[:, None] - mu) ** 2).sum(0) / nk + eps
        pi = nk / nk.sum()
    return r[:, int(np.argmin(mu))]


def _dense_votes(f: np.ndarray, labels: np.ndarray, num_classes: int, k: int, w: np.ndarray) -> np.ndarray:
    """kNN votes from the full N x N cosine matrix, neighbours by a full sort."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(f), num_classes))
    for i in range(len(f)):
        for j in nn[i]:
            votes[i, labels[j]] += max(sim[i, j], 0) * w[j] + 1e-6
    return votes / votes.sum(1, keepdims=True)


def _np_lloyd(x: np.ndarray, c: np.ndarray, w: np.ndarray, iters: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense weighted spherical Lloyd iterations in float64 from given initial centres."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, assign, x * w[:, None])
        empty = np.linalg.norm(new, axis=1) < 1e-12
        new[empty] = c[empty]
        c = new / np.linalg.norm(new, axis=1, keepdims=True)
    return c, np.argmax(x @ c.T, axis=1)


@pytest.mark.parametrize(("chunk", "tau"), [(7, 0.1), (64, 0.1), (1024, 0.1), (64, 0.02)])
def test_pair_nce_losses_tiled_equal_the_whole_set_infonce(chunk, tau):
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(203, 16, generator=g), torch.randn(203, 16, generator=g)
    a[:150] += 2 * v[:150]  # some pairs correspond, the rest do not
    want = cross_modal_nce(v, a, tau=tau)  # (N, N) logits
    got = est.pair_nce_losses(v, a, tau=tau, chunk=chunk)  # tau 0.02: the float64 tiles
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [7, 50, 1024])
def test_nearest_neighbours_by_row_blocks_equal_a_dense_top_k(chunk):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(230, 8, generator=g)
    sim = x @ x.T
    sim.fill_diagonal_(-math.inf)
    want_sim, want_idx = sim.topk(9, dim=1)
    got_sim, got_idx = est.nearest_neighbours(x, 9, chunk)
    order = got_sim.argsort(1, descending=True)
    torch.testing.assert_close(got_sim.gather(1, order), want_sim)
    torch.testing.assert_close(got_idx.gather(1, order), want_idx)
    assert est.nearest_neighbours(x[:4], 9, chunk)[1].shape == (4, 3)  # k capped at N - 1


@pytest.mark.parametrize("chunk", [7, 1024])
def test_knn_votes_chunked_equal_dense_votes(chunk):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(300, 16)).astype(np.float32)
    labels = rng.integers(0, 5, 300)
    w = rng.random(300)
    want = _dense_votes(f, labels, 5, 12, w.astype(np.float32))
    got = est.knn_label_votes(torch.from_numpy(f), torch.from_numpy(labels), 5, k=12, weights=torch.from_numpy(w),
                              chunk=chunk)
    assert got.dtype == torch.float64 and got.shape == (300, 5)  # summed in float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    corrected, q, t = est.corrected_labels(got, torch.from_numpy(labels))
    np.testing.assert_array_equal(corrected.numpy(), want.argmax(1))
    np.testing.assert_allclose(t.numpy(), want[np.arange(300), labels], atol=1e-6)


def test_gmm_posterior_matches_the_numpy_reference():
    rng = np.random.default_rng(2)
    for losses in (np.concatenate([rng.normal(0.5, 0.1, 700), rng.normal(2.0, 0.3, 300)]), rng.random(500),
                   rng.gamma(2.0, 0.5, 1000)):
        got = est.gmm_clean_probability(torch.from_numpy(losses).float())
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.numpy(), _np_gmm(losses.astype(np.float32)), atol=1e-6)


def test_kmeans_chunked_equals_dense_lloyd_from_the_same_seeds():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 8)) * 3
    x = (centres[rng.integers(0, 6, 400)] + rng.normal(size=(400, 8))).astype(np.float32)
    w = rng.random(400).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    c7, a7 = est.kmeans(xt, 6, weights=wt, iters=10, seed=5, chunk=7)
    cn, an = est.kmeans(xt, 6, weights=wt, iters=10, seed=5, chunk=400)
    np.testing.assert_array_equal(a7.numpy(), an.numpy())
    torch.testing.assert_close(c7, cn, rtol=1e-5, atol=1e-5)
    init = est.kmeans_plusplus(est.l2_normalize(xt.double()), 6, wt.double() + 1e-6, np.random.default_rng(5))
    c_ref, a_ref = _np_lloyd(x.astype(np.float64), init.double().numpy(), w.astype(np.float64) + 1e-6, 10)
    np.testing.assert_array_equal(a7.numpy(), a_ref)
    np.testing.assert_allclose(c7.numpy(), c_ref, atol=1e-5)
    # deterministic given the seed; another seed starts elsewhere
    torch.testing.assert_close(est.kmeans(xt, 6, weights=wt, seed=5)[0], est.kmeans(xt, 6, weights=wt, seed=5)[0])
    assert not torch.equal(init, est.kmeans_plusplus(est.l2_normalize(xt.double()), 6, wt.double(),
                                                     np.random.default_rng(6)))


def test_cluster_sums_equal_index_add():
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(101, 5, generator=g), torch.rand(101, generator=g)
    assign = torch.randint(0, 4, (101,), generator=g)
    want = torch.zeros(4, 5).index_add_(0, assign, x * w[:, None])
    torch.testing.assert_close(est.cluster_sums(x, assign, 4, w, chunk=9), want, rtol=1e-5, atol=1e-5)


def test_roc_auc_with_many_ties_equals_the_pairwise_definition():
    rng = np.random.default_rng(5)
    s, pos = rng.integers(0, 6, 400).astype(np.float64), rng.random(400) < 0.3
    d = s[pos][:, None] - s[~pos][None, :]
    want = float(((d > 0) + 0.5 * (d == 0)).mean())  # P(positive scores higher), ties half
    assert est.roc_auc(torch.from_numpy(s), torch.from_numpy(pos)) == pytest.approx(want, abs=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_estimation_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    v, a = torch.randn(3000, 64, generator=g), torch.randn(3000, 64, generator=g)
    a[:2000] += v[:2000]
    labels = torch.randint(0, 8, (3000,), generator=g)
    cuda = torch.device("cuda")
    losses = est.pair_nce_losses(v, a, 0.1, chunk=512)
    losses_gpu = est.pair_nce_losses(v.to(cuda), a.to(cuda), 0.1, chunk=512)
    assert losses_gpu.device.type == "cuda"
    torch.testing.assert_close(losses_gpu.cpu(), losses, rtol=1e-4, atol=1e-4)
    w = est.gmm_clean_probability(losses)
    torch.testing.assert_close(est.gmm_clean_probability(losses_gpu).cpu(), w, rtol=0, atol=1e-4)
    votes = est.knn_label_votes(v, labels, 8, k=20, weights=w, chunk=512)
    votes_gpu = est.knn_label_votes(v.to(cuda), labels.to(cuda), 8, k=20, weights=w.to(cuda), chunk=512)
    torch.testing.assert_close(votes_gpu.cpu(), votes, rtol=1e-4, atol=1e-4)
    _, assign = est.kmeans(v + a, 16, weights=w, seed=0)
    _, assign_gpu = est.kmeans((v + a).to(cuda), 16, weights=w.to(cuda), seed=0)
    assert (assign_gpu.cpu() == assign).float().mean() > 0.99


# -------------------------------------------------------------------------------- estimation in a short run


def _latent_av_set(n: int, seed: int) -> ArraySet:
    """Clips whose colour and tone pitch share one latent: pictures and sound correspond by construction."""
    spec = ClipSpec(fps=8, frames=8, height=32, width=32, sample_rate=16000, audio_samples=16000)
    rng = np.random.default_rng(seed)
    z = rng.random(n)
    frames = np.empty((n, 12, 32, 32, 3), np.uint8)
    frames[..., 0] = (255 * z)[:, None, None, None]
    frames[..., 1] = (255 * (1 - z))[:, None, None, None]
    frames[..., 2] = 128
    t = np.arange(24000) / 16000
    audio = (0.5 * np.sin(2 * np.pi * (300 + 3000 * z)[:, None] * t)).astype(np.float32)
    return ArraySet(frames, audio, (z * 8).astype(np.int64).clip(0, 7), spec)


def test_window_batch_shapes():
    data = _latent_av_set(5, 0)
    video, audio = window_batch(data, np.array([0, 3]), np.array([0, 4]))
    assert video.shape == (2, 3, 8, 32, 32) and audio.shape == (2, 16000)
    owners, starts = eval_windows(data)
    assert len(owners) == len(starts) and set(owners) == set(range(5))


def test_noise_estimation_finds_planted_mismatched_pairs():
    from training.action.noisy.methods import NTLConfig, RunConfig, train_ntl
    from training.models import create_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only contend
    try:
        torch.manual_seed(0)
        data = _latent_av_set(64, 0)
        noise = make_noise(data.labels, 8, 0.0, "sym", 0.25, seed=0)
        noisy = data.with_noise(noise.labels, noise.audio_source)
        cfg = RunConfig(epochs=4, batch_size=16, lr=3e-3, seed=0,
                        ntl=NTLConfig(phase1_frac=1.0, warmup=1, correction=False))
        _, info = train_ntl(lambda: create_model("av_action_tiny"), noisy, cfg, noise)
    finally:
        torch.set_num_threads(threads)
    # label-free: the estimated non-correspondence ranks the planted pairs well above chance (0.5)
    assert info["corr_auc"] > 0.7, info["phase1"]
    last = info["phase1"][-1]
    assert last["weight_clean_mean"] > last["weight_noisy_mean"]


def test_train_action_method_ntl_writes_an_exportable_checkpoint(action_ds, tmp_path):
    """``train-action --method ntl`` on a real (tiny) SynthAV set: noise recorded, checkpoint in the export
    format, selected on noisy validation labels among phase-2 epochs."""
    import contextlib
    import io
    import json

    from training.cli import main
    from training.models import build_from_config
    from training.utils import load_checkpoint

    buf = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["train-action", "--method", "ntl", "model=av_action_tiny", f"data.train={action_ds}",
                         f"data.val={action_ds}", "data.workers=1", "optim.epochs=3", "optim.batch_size=8",
                         "ntl.phase1_frac=0.34", "ntl.warmup=1", "ntl.knn_k=3", "noise.corr_noise=0.25",
                         "array_cache=", f"out={tmp_path}"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert result["noise"]["label_noisy"] == round(0.4 * 16) and result["noise"]["corr_noisy"] == 4
    assert result["best_epoch"] >= 1  # epoch 0 is phase 1: no classifier to select yet
    ckpt = load_checkpoint(result["checkpoint"])
    assert ckpt["kind"] == "action" and ckpt["config"]["method"] == "ntl"
    assert ckpt["config"]["noise"]["label_noise"] == 0.4
    model = build_from_config(ckpt["model"], ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])


def test_noise_benchmark_cli_writes_table_json_and_plot(action_ds, tmp_path):
    """``noise-benchmark`` end to end on 16 real clips: one cell, CE, NTL and an ablation, a short budget."""
    import contextlib
    import io
    import json

    from training.cli import main

    out = tmp_path / "bench.json"
    buf = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(buf):
            code = main(["noise-benchmark", "--data", str(action_ds), "--n-train", "12", "--n-test", "4",
                         "--cells", "sym:0.25:0.25", "--methods", "ce,ntl,ntl-no-trust", "--seeds", "1",
                         "--epochs", "4", "--batch-size", "4", "--ntl-set", "warmup=1,knn_k=3",
                         "--json", str(out), "--cache-dir", str(tmp_path / "cache")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["results"]] == ["ce", "ntl", "ntl-no-trust"]
    for r in data["results"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["noise"]["label_noisy"] == 3 and r["noise"]["corr_noisy"] == 3  # round(0.25 * 12)
    ntl = data["results"][1]
    assert "corr_auc" in ntl and ntl["corrections"], ntl  # estimation scored against the planted pairs
    table = out.with_suffix(".md").read_text()
    assert table.splitlines()[0].startswith("| label noise | corr. noise | ce | ntl | ntl-no-trust |")
    assert "| 25% sym | 25% |" in table and table.strip() in buf.getvalue()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
