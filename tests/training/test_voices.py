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
