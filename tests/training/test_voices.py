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


def _mp3_line(f0: float, seconds: float, sr: int = 11025) -> bytes:
    """A "line": a tone at ``f0`` between half-second silences, as a mono MP3 file's bytes."""
    import io
    from fractions import Fraction

    import av

    t = np.arange(int(seconds * sr)) / sr
    x = np.concatenate([np.zeros(sr // 2), 0.3 * np.sin(2 * np.pi * f0 * t), np.zeros(sr // 2)]).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=sr, layout="mono")
        for start in range(0, len(x), 1152):
            frame = av.AudioFrame.from_ndarray(x[None, start : start + 1152], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def test_acted_dialogue_is_read_from_the_game_archive_by_character(tmp_path, monkeypatch) -> None:
    """``--engines fotaq``: the voice lines of the game's archive (a table of named entries), one speaker for the
    hero's lines (J) and one per dialogue file's other character (P); cut-scene lines and other files are left out;
    every speaker is one person, in train; utterances are runs of consecutive lines, 3-6 s, trimmed of silence."""
    import struct

    import training.data.voices as voices

    files = {"010001J1.SB": _mp3_line(120, 1.5), "010001P1.SB": _mp3_line(220, 2.0),
             "010002J1.SB": _mp3_line(125, 2.5), "010002P1.SB": _mp3_line(230, 1.6),
             "010003P1.SB": _mp3_line(240, 2.2), "020001P1.SB": _mp3_line(300, 4.0),
             "C01A_011.SB": _mp3_line(500, 2.0), "ROOM1.PCX": b"\x00" * 64}
    table, blobs = b"", b""
    start = 15 + 21 * len(files) + 12  # the data after the table and a NUL name that ends it
    for name, blob in files.items():
        table += name.encode().ljust(12, b"\0") + b"\x01" + struct.pack(">II", start + len(blobs), len(blob))
        blobs += blob
    archive = tmp_path / "queen.1c"
    archive.write_bytes(b"QTBLCEM10" + b"\0" * 6 + table + b"\0" * 12 + blobs)
    monkeypatch.setattr(voices, "FOTAQ_ARCHIVE", archive)

    lines = voices.fotaq_lines()
    assert {k: len(v) for k, v in lines.items()} == {"fotaq-joe": 2, "fotaq-d01": 3, "fotaq-d02": 1}
    assert lines["fotaq-d02"][0] == files["020001P1.SB"]
    assert [sp.person for sp in voices.fotaq_speakers()] == ["fotaq"] * 3 and split_of("fotaq") == "train"
    monkeypatch.setattr(voices, "speakers", lambda seed=0: [])
    index = build_library(tmp_path / "lib", engines=("fotaq",), workers=1)
    rows = {r["name"]: r for r in csv.DictReader(index.open())}
    assert set(rows) == {"fotaq-joe", "fotaq-d01", "fotaq-d02"} and {r["split"] for r in rows.values()} == {"train"}
    for name, row in rows.items():
        out = sorted((tmp_path / "lib" / "train" / name).glob("*.wav"))
        assert len(out) == int(row["utterances"]) == 1  # each character's lines make one run here
        x, rate = sf.read(out[0])
        n_lines = {"fotaq-joe": 2, "fotaq-d01": 3, "fotaq-d02": 1}[name]
        spoken = {"fotaq-joe": 4.0, "fotaq-d01": 5.8, "fotaq-d02": 4.0}[name]
        # the tones kept (within the trim's margins and the +-6 % resampling), the 0.5-s silences around them gone,
        # 0.2-0.6 s pauses between lines
        assert rate == 16000 and spoken * 0.94 <= len(x) / rate <= (spoken + 0.7 * n_lines) * 1.06
    with pytest.raises(RuntimeError, match="QTBL"):
        (tmp_path / "bad.1c").write_bytes(b"RIFF" + b"\0" * 40)
        voices.fotaq_lines(tmp_path / "bad.1c")


def test_drascula_casts_are_held_out_by_language(tmp_path, monkeypatch) -> None:
    """``--engines drascula``: one speaker per character (the file name's letters) and language folder, headerless
    8-bit PCM lines at 11.025 kHz; the English cast is one person in test, the Spanish cast one in val; the Italian
    folder (the English recordings again) and files that are not voice lines are left out."""
    import training.data.voices as voices

    sr = 11025
    root = tmp_path / "drascula"
    for lang, f0 in (("en", 130.0), ("es", 210.0), ("it", 130.0)):
        (root / lang).mkdir(parents=True)
        for name, k in (("1.ALS", 0), ("2.ALS", 1), ("D1.ALS", 2), ("VB1.ALS", 3)):
            t = np.arange(int(2.5 * sr)) / sr
            x = np.concatenate([np.zeros(sr // 3), 0.5 * np.sin(2 * np.pi * f0 * (1 + 0.2 * k) * t), np.zeros(sr // 3)])
            (root / lang / name).write_bytes(np.round(128 + 127 * x).astype(np.uint8).tobytes())
        (root / lang / "99.ALD").write_bytes(b"\x80" * 100)
    monkeypatch.setattr(voices, "DRASCULA_ROOT", root)
    assert list(voices.drascula_lines("en")) == ["drascula-en-d", "drascula-en-hero", "drascula-en-vb"]
    assert [p.name for p in voices.drascula_lines("en")["drascula-en-hero"]] == ["1.ALS", "2.ALS"]
    monkeypatch.setattr(voices, "speakers", lambda seed=0: [])
    index = build_library(tmp_path / "lib", engines=("drascula",), workers=1)
    rows = {r["name"]: r for r in csv.DictReader(index.open())}
    assert {n: (r["person"], r["split"]) for n, r in rows.items()} == {
        **{f"drascula-en-{c}": ("drascula-en", "test") for c in ("d", "hero", "vb")},
        **{f"drascula-es-{c}": ("drascula-es", "val") for c in ("d", "hero", "vb")}}
    x, rate = sf.read(tmp_path / "lib" / "test" / "drascula-en-hero" / "0000.wav")
    # two 2.5-s lines, trimmed of their silences, 0.2-0.6 s apart: one utterance
    assert rate == 16000 and 5.0 * 0.94 <= len(x) / rate <= (5.0 + 0.2 + 0.6) * 1.06
    spectrum = np.abs(np.fft.rfft(x[: rate * 2]))
    assert abs(np.argmax(spectrum) * rate / (2 * rate) / 130.0 - 1) < 0.07  # the pitch, within the +-6 % resampling


def test_steel_sky_lines_are_unpacked_and_grouped_by_pitch(tmp_path, monkeypatch) -> None:
    """``--engines bass``: the voice lines (file numbers 50000-59999) of the game's disk, RNC-packed or not, at a
    plain or a 16-byte-unit offset, in file-number order; other files left out; lines grouped into quarter-octave
    pitch bands that stand in for speakers, all one person in train."""
    import struct

    import training.data.voices as voices
    from tests.training.test_rnc import pack

    sr = 11025

    def line(f0: float) -> bytes:
        t = np.arange(int(2.0 * sr)) / sr
        return np.round(128 + 80 * np.sin(2 * np.pi * f0 * t)).astype(np.uint8).tobytes()

    low, high = line(120.0), line(240.0)
    packed, unpacked = pack([[(high[:1000], (1000, 1000)), (high[2000:], None)]])
    assert unpacked != high and len(unpacked) == len(high)  # the copy repeats the first 1000 samples: still 240 Hz
    header = bytes([0x81]) + b"\0" * 21  # bit 7 of the header's flag: packed
    files = [(50002, header + packed, False), (50001, b"\0" * 22 + low, True), (100, b"\x81" + b"\0" * 40, False)]
    disk, index = bytearray(), struct.pack("<I", len(files))
    for number, data, sixteen in files:
        while sixteen and len(disk) % 16:
            disk.append(0)
        offset = (len(disk) >> 4) | 0x800000 if sixteen else len(disk)
        flags = len(data) | (0x800000 if data[0] & 0x80 == 0 else 0)  # bit 23: not packed
        index += struct.pack("<H", number) + offset.to_bytes(3, "little") + flags.to_bytes(3, "little")
        disk += data
    root = tmp_path / "bass"
    root.mkdir()
    (root / "sky.dnr").write_bytes(index)
    (root / "sky.dsk").write_bytes(bytes(disk))
    monkeypatch.setattr(voices, "BASS_ROOT", root)

    assert voices.bass_lines() == [low, unpacked]
    groups = voices.bass_by_pitch()
    assert {k: len(v) for k, v in groups.items()} == {"bass-f0-119": 1, "bass-f0-238": 1}
    assert [sp.person for sp in voices.bass_speakers()] == ["bass", "bass"] and split_of("bass") == "train"
    monkeypatch.setattr(voices, "speakers", lambda seed=0: [])
    index_csv = build_library(tmp_path / "lib", engines=("bass",), workers=1)
    rows = {r["name"]: r for r in csv.DictReader(index_csv.open())}
    assert set(rows) == {"bass-f0-119", "bass-f0-238"} and {r["split"] for r in rows.values()} == {"train"}
