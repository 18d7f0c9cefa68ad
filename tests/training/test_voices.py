"""The speech library for separation training: speaker- and person-disjoint splits, real synthesiser output."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import soundfile as sf

from training.data.voices import SPLITS, Speaker, build_library, sentence, speakers, split_of


def test_splits_are_person_disjoint_and_all_used() -> None:
    by_person: dict[str, set[str]] = {}
    for sp in speakers():
        by_person.setdefault(sp.person, set()).add(split_of(sp.person))
    assert all(len(s) == 1 for s in by_person.values())  # one person, one split (Flite's and Festival's kal, slt)
    assert by_person["kal"] == {"train"} and by_person["rms"] == {"test"} and by_person["awb"] == {"val"}
    counts = {s: sum(split_of(sp.person) == s for sp in speakers()) for s in SPLITS}
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0
    assert len({sp.name for sp in speakers()}) == len(speakers())


def test_sentences_are_random_words_in_the_language_spelling() -> None:
    rng = np.random.default_rng(0)
    en = sentence(rng, "en").split()
    assert 6 <= len(en) <= 16
    ru = sentence(rng, "ru")
    assert any("\u0400" <= c <= "\u04ff" for c in ru)
    cs = sentence(rng, "cs")
    assert cs.isascii() and cs != sentence(rng, "cs")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_library_renders_espeak_speakers_into_their_splits(tmp_path, monkeypatch) -> None:
    import training.data.voices as voices

    chosen = [Speaker("espeak-en-m1", "espeak-en-m1", "espeak", "en+m1", "en", 40, 170),
              Speaker("espeak-de-f2", "espeak-de-f2", "espeak", "de+f2", "de", 60, 150)]
    monkeypatch.setattr(voices, "speakers", lambda seed=0: chosen)
    index = build_library(tmp_path, n_espeak_utts=2, engines=("espeak",), workers=1)
    rows = list(csv.DictReader(index.open()))
    assert [r["name"] for r in rows] == ["espeak-en-m1", "espeak-de-f2"]
    for r in rows:
        files = sorted((tmp_path / r["split"] / r["name"]).glob("*.wav"))
        assert len(files) == 2 and r["split"] == split_of(r["person"])
        x, sr = sf.read(files[0])
        assert sr == 16000 and len(x) > sr and 0.5 < np.abs(x).max() <= 0.9 + 1e-6
        assert np.sqrt(np.mean(x**2)) > 0.02  # speech, not silence
    a, _ = sf.read(tmp_path / rows[0]["split"] / rows[0]["name"] / "000.wav")
    b, _ = sf.read(tmp_path / rows[0]["split"] / rows[0]["name"] / "001.wav")
    assert len(a) != len(b) or not np.allclose(a, b)  # different takes


def test_recorded_readers_render_runs_of_their_own_recordings(tmp_path, monkeypatch) -> None:
    """KLettres readers (``--engines klettres``): one speaker per language folder, folders that may share a reader
    share a person and a split, and an utterance is a 3-6 s run of that reader's trimmed recordings."""
    import training.data.voices as voices

    by_name = {sp.name: sp for sp in speakers() if sp.engine == "klettres"}
    assert by_name["klettres-en_GB"].person == by_name["klettres-en"].person
    assert split_of(by_name["klettres-fr"].person) == "test" and split_of(by_name["klettres-nl"].person) == "val"
    assert split_of(by_name["klettres-ml"].person) == "train"
    # a fake /usr/share/klettres: two readers, each a few "letters" (tones at their own pitch, in silence) at 44.1 kHz
    root = tmp_path / "klettres"
    sr = 44100
    for lang, f0 in (("en", 140.0), ("fr", 230.0)):
        for i in range(4):
            (root / lang / "alpha").mkdir(parents=True, exist_ok=True)
            t = np.arange(int(0.4 * sr)) / sr
            tone = 0.3 * np.sin(2 * np.pi * f0 * (1 + 0.1 * i) * t)
            x = np.concatenate([np.zeros(sr // 2), tone, np.zeros(sr // 2)])
            sf.write(root / lang / "alpha" / f"{i}.ogg", np.stack([x, x], axis=1), sr)
    monkeypatch.setattr(voices, "KLETTRES_ROOT", root)
    monkeypatch.setattr(voices, "speakers", lambda seed=0: [by_name["klettres-en"], by_name["klettres-fr"]])
    index = build_library(tmp_path / "lib", n_utts=3, engines=("klettres",), workers=1)
    rows = {r["name"]: r for r in csv.DictReader(index.open())}
    assert rows["klettres-en"]["split"] == "train" and rows["klettres-fr"]["split"] == "test"
    for name in rows:
        files = sorted((tmp_path / "lib" / rows[name]["split"] / name).glob("*.wav"))
        assert len(files) == 3
        for f in files:
            x, rate = sf.read(f)
            assert rate == 16000 and 3.0 * 0.94 - 0.5 <= len(x) / rate <= 6.0 * 1.06 + 0.5
            assert abs(np.abs(x).max() - 0.9) < 1e-4
            # trimmed: the 0.5-s silences around each recording are gone, only the short pauses remain
            quiet = np.abs(x) < 0.01
            longest = max((len(run) for run in np.split(quiet, np.flatnonzero(np.diff(quiet.astype(int))) + 1)
                           if run.all()), default=0)
            assert longest < 0.4 * rate
