"""A library of speech recordings to train separation on: ``python -m training voices --out data/voices``.

Real collections of recorded speech cannot be downloaded here, so the library is rendered by the speech
synthesisers that Debian packages: Festival's voices (``festvox-*``: diphone and HTS voices built from a
person's recorded speech, in English, Czech, Italian, Russian, Finnish and Catalan), Flite's built-in voices
(US and Scottish English) and espeak-ng (formant synthesis, 16 languages x voice variants). Each *speaker* is
one voice at its own fixed pitch and rate; the sentences are random (English from a word list, the other
languages as pronounceable pseudo-words in their spelling), and every utterance is resampled by a random
factor within +-6 % (pitch and tempo together, a natural range) so that no two takes are alike.

**Recorded voices** (``--engines klettres``, into a library of its own: ``python -m training voices --out
data/voices_recorded --engines klettres``): Debian's ``klettres-data`` holds people reading the letters and
syllables of 20 languages (KDE's KLettres, one reader per language; about 50 minutes in all). An utterance is a
random run of one reader's recordings, each trimmed of its silences, with short pauses between them, resampled
like the others: real human voices and real microphones, if not real sentences.

**Acted dialogue** (``--engines fotaq``, a library of its own: ``python -m training voices --out data/voices_talkie
--engines fotaq``): Debian's ``flight-of-the-amazon-queen`` (main) is the talkie release of a 1995 adventure game,
given away by its authors: about 4 hours of continuous English sentences spoken by its voice actors (2.9 of them
kept, below), MP3 at 11.025 kHz inside the game's archive (``queen.1c``). A speaker is the hero (``J`` lines) or
the character of one dialogue file (``P`` lines of dialogue ``NN``); the cut-scene lines, which mix characters, are
left out. Which actor voiced which character is not known, so every one of them is one ``person`` and all go to
``train``: none of them is in our val or test, and none is in the independent evaluation. An utterance is a run of
one character's consecutive lines, each trimmed of silence, 0.2-0.6 s apart, until it is 3-6 s long, resampled like
the others.

**Acted dialogue held out** (``--engines drascula``: ``python -m training voices --out data/voices_drascula --engines
drascula``): Debian's ``drascula`` and ``drascula-spanish`` (main; a 1996 adventure game given away by Alcachofa
Soft) hold its voice lines as headerless 8-bit PCM at 11.025 kHz, 49 minutes by the English cast and 44 by the
Spanish one, one file per line, named by character. Its English cast is our own **test** of continuous real
speech (``drascula-en``), the Spanish cast our **val** (``drascula-es``); nothing trains on either. A character is
a speaker, a cast is a person (who voiced whom within a cast is not known; the two casts were recorded apart).

**More acted dialogue** (``--engines bass``: ``python -m training voices --out data/voices_bass --engines bass``):
Debian's ``beneath-a-steel-sky`` (main; the 1994 CD release, given away by Revolution Software) keeps about 2.2
hours of voice lines, unsigned 8-bit PCM at 11.025 kHz, most of them RNC-packed, in ``sky.dsk`` (indexed by
``sky.dnr``). The game does not say who speaks a line, so lines are grouped by their median pitch, in bands a
quarter of an octave wide, and a band stands in for a speaker. One person, all in ``train``.

Splits are **speaker-disjoint and person-disjoint**: two voices made from the same person's recordings (Flite's
and Festival's ``kal``, ``slt``) have one ``person`` and always land in the same split. ``test`` and ``val``
persons are fixed below; espeak-ng speakers are split by a hash of their name. Debian's
``asterisk-core-sounds-*`` are never used here: they are reserved for the independent evaluation.

Layout written: ``<out>/<split>/<speaker>/<nnn>.wav`` (16 kHz mono float) and ``<out>/speakers.csv`` (speaker,
person, engine, voice, language, split, utterances, seconds). Deterministic from ``--seed`` and the installed
synthesisers' versions (recorded in ``<out>/voices.json``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import math
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Speaker:
    name: str  # unique, used as the folder name
    person: str  # whose recordings the voice was built from (the split key)
    engine: str  # festival | flite | espeak
    voice: str  # the engine's voice name (espeak: language+variant)
    language: str
    pitch: int = 50  # espeak -p (0-99)
    rate: int = 160  # espeak -s (words per minute)


# Festival: (voice function suffix, person, language). The Indic NSK voices need files Debian does not ship.
FESTIVAL = (
    ("kal_diphone", "kal", "en"), ("ked_diphone", "ked", "en"), ("cmu_us_slt_arctic_hts", "slt", "en"),
    ("czech_dita", "dita", "cs"), ("czech_krb", "krb", "cs"), ("czech_machac", "machac", "cs"),
    ("czech_ph", "ph", "cs"), ("lp_diphone", "lp", "it"), ("pc_diphone", "pc", "it"),
    ("msu_ru_nsh_clunits", "nsh", "ru"), ("suo_fi_lj_diphone", "lj", "fi"), ("hy_fi_mv_diphone", "mv", "fi"),
    ("upc_ca_ona_hts", "ona", "ca"),
)
FLITE = (("kal", "kal", "en"), ("kal16", "kal", "en"), ("awb", "awb", "en"), ("rms", "rms", "en"),
         ("slt", "slt", "en"))
ESPEAK_LANGS = ("en", "en-us", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "cs", "ru", "fi", "hu", "tr", "ro")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt")
# KLettres readers, by language folder under KLETTRES_ROOT. Folders whose readers may be one person (English and
# British English, German and Low German, Russian and Ukrainian) share a person, so they share a split.
KLETTRES_ROOT = Path("/usr/share/klettres")
KLETTRES = ("ar", "cs", "da", "de", "en", "en_GB", "es", "fr", "he", "hu", "it", "lt", "ml", "nb", "nds", "nl",
            "pt_BR", "ru", "tn", "uk")
_KLETTRES_PERSON = {"en_GB": "en", "nds": "de", "uk": "ru"}
# The acted dialogue: the game's archive, and its voice lines (``<dialogue NN><line id><J|P><part>.SB``).
FOTAQ_ARCHIVE = Path("/usr/share/scummvm/flight-of-the-amazon-queen/queen.1c")
_FOTAQ_LINE = re.compile(r"(\d\d)[0-9A-F]{4}([JP])\d\.SB")
# Persons held out. test: our own speaker-disjoint evaluation; val: model selection during training.
TEST_PERSONS = frozenset({"ked", "krb", "pc", "mv", "rms", "klettres-fr", "klettres-lt", "klettres-pt_BR",
                          "drascula-en"})
VAL_PERSONS = frozenset({"ph", "awb", "klettres-nl", "drascula-es"})

_EN_WORDS = (
    "the a this that my your our their one two three some many every people time year day week night way "
    "thing man woman child world life hand part place case point home room house water light voice story "
    "street city road door window table garden river morning evening music paper letter number question "
    "answer money friend family mother father brother sister teacher doctor market school station train "
    "is was are were will would can could should must have has had do does did go goes went come came "
    "see saw look looked make made take took give gave find found think thought tell told ask asked work "
    "worked call called try tried need needed feel felt leave left keep kept start started show showed "
    "hear heard play played run ran move moved live lived bring brought write wrote sit sat stand stood "
    "good new first last long great little own other old right big high different small large next early "
    "young important few public bad same able quiet green yellow cold warm heavy quick slow bright dark "
    "very really quite just still never always often again later soon today tomorrow yesterday here there "
    "and but or because if when while after before since until about over under with without from into"
).split()
# Pseudo-word spelling per language: (onsets, vowels, codas). ASCII only: several Festival voices read Latin-1.
_SPELLING = {
    "cs": ("b c d h j k l m n p r s t v z ch st pr tr kr sl", "a e i o u y a e o", "k l m n s t j"),
    "it": ("b c d f g l m n p r s t v z gr pr tr st br", "a e i o u a o", ""),
    "fi": ("h j k l m n p r s t v", "a e i o u y aa ee ii uu", "n s t l"),
    "ca": ("b c d f g l m n p r s t v ll pr tr", "a e i o u a e", "l n r s t"),
    "de": ("b d f g h k l m n p r s t w z sch st", "a e i o u au ei ie", "n r s t ch"),
    "fr": ("b d f j l m n p r s t v ch", "a e i o u ou on an", "r s l"),
    "es": ("b c d f g l m n p r s t ll ch", "a e i o u a o", "n r s l"),
    "pt": ("b d f g l m n p r s t v ch", "a e i o u ao", "s r l"),
    "nl": ("b d f g h k l m n p r s t v w z", "a e i o u aa ee oo ij", "n r s t k"),
    "pl": ("b c d g j k l m n p r s t w z sz cz", "a e i o u y", "k n s t"),
    "sv": ("b d f g h j k l m n p r s t v", "a e i o u y", "n r s t k"),
    "hu": ("b d f g h k l m n p r s t v z sz", "a e i o u", "n r s t k l"),
    "tr": ("b c d g k l m n p r s t y z", "a e i o u", "n r s k l m"),
    "ro": ("b c d f g l m n p r s t v", "a e i o u", "n r s t"),
}
_RU = ("б в г д к л м н п р с т", "а е и о у ы я", "н т к л")


def speakers(seed: int = 0) -> list[Speaker]:
    """Every speaker the library renders (independent of what is installed; ``available`` filters)."""
    out = [Speaker(f"festival-{v}", p, "festival", v, lang) for v, p, lang in FESTIVAL]
    out += [Speaker(f"flite-{v}", p, "flite", v, lang) for v, p, lang in FLITE]
    rng = np.random.default_rng([seed, 7])
    for lang in ESPEAK_LANGS:
        for var in ESPEAK_VARIANTS:
            name = f"espeak-{lang}-{var}"
            out.append(Speaker(name, name, "espeak", f"{lang}+{var}", lang.split("-")[0],
                               pitch=int(rng.integers(25, 76)), rate=int(rng.integers(135, 196))))
    out += [Speaker(f"klettres-{lang}", f"klettres-{_KLETTRES_PERSON.get(lang, lang)}", "klettres", lang,
                    lang.split("_")[0]) for lang in KLETTRES]
    return out


def split_of(person: str) -> str:
    if person in TEST_PERSONS:
        return "test"
    if person in VAL_PERSONS:
        return "val"
    if person.startswith("espeak-"):  # about 70 / 15 / 15 by a stable hash of the name
        h = int(hashlib.sha256(person.encode()).hexdigest()[:8], 16) % 20
        return "test" if h < 3 else "val" if h < 6 else "train"
    return "train"


def sentence(rng: np.random.Generator, language: str) -> str:
    """A random sentence of 6-16 words, in the language's spelling."""
    n = int(rng.integers(6, 17))
    if language == "en":
        return " ".join(_EN_WORDS[int(i)] for i in rng.integers(len(_EN_WORDS), size=n))
    onsets, vowels, codas = (s.split() for s in (_RU if language == "ru" else _SPELLING[language]))
    words = []
    for _ in range(n):
        syl = []
        for _ in range(int(rng.integers(1, 4))):
            syl.append(onsets[int(rng.integers(len(onsets)))] + vowels[int(rng.integers(len(vowels)))])
            if codas and rng.uniform() < 0.3:
                syl.append(codas[int(rng.integers(len(codas)))])
        words.append("".join(syl))
    return " ".join(words)


ENGINES = ("festival", "flite", "espeak", "klettres", "fotaq", "drascula", "bass")
SYNTHESISERS = ("festival", "flite", "espeak")  # what ``voices`` renders by default


def available(engine: str) -> bool:
    if engine == "klettres":
        return KLETTRES_ROOT.is_dir()
    if engine == "fotaq":
        return FOTAQ_ARCHIVE.is_file()
    if engine == "drascula":
        return any((DRASCULA_ROOT / lang).is_dir() for lang in DRASCULA_LANGS)
    if engine == "bass":
        return (BASS_ROOT / "sky.dnr").is_file()
    return shutil.which({"festival": "festival", "flite": "flite", "espeak": "espeak-ng"}[engine]) is not None


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _synthesise(sp: Speaker, texts: Sequence[str], tmp: Path) -> list[Path]:
    """Render ``texts`` with one speaker into ``tmp``; one engine process per speaker where possible."""
    paths = [tmp / f"{i:04d}.wav" for i in range(len(texts))]
    if sp.engine == "festival":
        script = tmp / "say.scm"
        lines = [f"(voice_{sp.voice})"]
        lines += [f"(utt.save.wave (SynthText {_scheme_string(t)}) {_scheme_string(str(p))})"
                  for t, p in zip(texts, paths, strict=True)]
        script.write_text("\n".join(lines) + "\n", encoding="utf-8")
        subprocess.run(["festival", "-b", str(script)], check=True, capture_output=True, timeout=600)
    elif sp.engine == "flite":
        for t, p in zip(texts, paths, strict=True):
            subprocess.run(["flite", "-voice", sp.voice, "-t", t, "-o", str(p)], check=True, capture_output=True,
                           timeout=120)
    else:
        for t, p in zip(texts, paths, strict=True):
            subprocess.run(["espeak-ng", "-v", sp.voice, "-p", str(sp.pitch), "-s", str(sp.rate), "-w", str(p), t],
                           check=True, capture_output=True, timeout=120)
    return paths


def _resample(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """``x`` at ``sr`` read as if recorded at ``sr * factor``, back at ``SAMPLE_RATE``: pitch and tempo x factor."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(SAMPLE_RATE / (sr * factor)).limit_denominator(400)
    return resample_poly(x, ratio.numerator, ratio.denominator)


def _trim(x: np.ndarray, sr: int) -> np.ndarray:
    """Drop leading and trailing silence (below -45 dB of the peak, 10 ms frames), keep 50 ms margins."""
    hop = sr // 100
    n = len(x) // hop
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = np.flatnonzero(e > np.abs(x).max() * 10 ** (-45 / 20))
    if not len(loud):
        return x[:0]
    a, b = max(0, (loud[0] - 5) * hop), min(len(x), (loud[-1] + 6) * hop)
    return x[a:b]


def _write_utterance(path: Path, y: np.ndarray, what: str) -> float:
    """``y`` peak-normalised to 0.9 as 16 kHz float wav; returns its seconds."""
    peak = np.abs(y).max() if len(y) else 0.0
    if not math.isfinite(peak) or peak == 0:
        raise RuntimeError(f"{what} is silent")
    sf.write(path, (0.9 * y / peak).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    return len(y) / SAMPLE_RATE


def render_recorded(sp: Speaker, out_dir: Path, n_utts: int, rng: np.random.Generator,
                    seconds: tuple[float, float] = (3.0, 6.0)) -> tuple[int, float]:
    """``n_utts`` utterances of a KLettres reader: random runs of the reader's recordings (letters, syllables),
    each trimmed of silence, 50-250 ms apart, until the utterance is 3-6 s long; the whole utterance resampled by a
    factor within +-6 %. Recordings that are silent after trimming are left out."""
    clips = []
    for p in sorted((KLETTRES_ROOT / sp.voice).glob("*/*.ogg")):
        x, sr = sf.read(p, dtype="float64", always_2d=True)
        x = _trim(_resample(x.mean(axis=1), sr, 1.0), SAMPLE_RATE)
        if len(x) >= SAMPLE_RATE // 10:
            clips.append(x)
    if not clips:
        raise RuntimeError(f"{sp.name}: no usable recordings under {KLETTRES_ROOT / sp.voice}")
    total = 0.0
    for i in range(n_utts):
        target = rng.uniform(*seconds) * SAMPLE_RATE
        parts, n = [], 0
        while n < target:
            x = clips[int(rng.integers(len(clips)))]
            gap = np.zeros(int(rng.uniform(0.05, 0.25) * SAMPLE_RATE))
            parts += [x, gap]
            n += len(x) + len(gap)
        y = _resample(np.concatenate(parts[:-1]), SAMPLE_RATE, float(rng.uniform(0.94, 1.06)))
        total += _write_utterance(out_dir / f"{i:03d}.wav", y, f"{sp.name}: utterance {i}")
    return n_utts, total


def _stamp(path: Path) -> tuple[int, int]:
    """What keys a file's cached reading: its modification time and size (a reinstalled package is read again)."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _u8_pcm(data: bytes) -> np.ndarray:
    """Unsigned 8-bit PCM as float64 in [-1, 1)."""
    return (np.frombuffer(data, np.uint8).astype(np.float64) - 128.0) / 128.0


def fotaq_lines(archive: Path | None = None) -> dict[str, list[bytes]]:
    """The voice lines of the game's archive by speaker (``fotaq-joe``, ``fotaq-dNN``), each an MP3 file's bytes,
    in the archive's order (a dialogue's lines in turn). Read once per process (every speaker's rendering asks).

    The archive as Debian ships it (``archive``: :data:`FOTAQ_ARCHIVE`) starts with ``QTBL``, a version (``CEM10``)
    and 6 bytes not read here, then a table of 21-byte entries: the file name (12 bytes, NUL-padded), a bundle number
    (1 byte), the file's offset and size in the archive (big-endian 32-bit)."""
    archive = archive or FOTAQ_ARCHIVE
    return _fotaq_lines(archive, _stamp(archive))


@functools.cache
def _fotaq_lines(archive: Path, stamp: tuple[int, int]) -> dict[str, list[bytes]]:
    data = archive.read_bytes()
    if data[:4] != b"QTBL":
        raise RuntimeError(f"{archive}: not the game's resource archive (no QTBL header)")
    lines: dict[str, list[bytes]] = {}
    pos, n = 15, 0
    while pos + 21 <= len(data):
        raw = data[pos : pos + 12].rstrip(b"\0")
        if not re.fullmatch(rb"[0-9A-Z_-]+\.[0-9A-Z]{1,3}", raw):
            break  # the end of the table
        offset, size = struct.unpack(">II", data[pos + 13 : pos + 21])
        if offset + size > len(data):
            raise RuntimeError(f"{archive}: entry {raw.decode()} runs past the end of the archive")
        pos, n = pos + 21, n + 1
        if m := _FOTAQ_LINE.fullmatch(raw.decode()):
            who = "fotaq-joe" if m.group(2) == "J" else f"fotaq-d{m.group(1)}"
            lines.setdefault(who, []).append(data[offset : offset + size])
    if not lines:
        raise RuntimeError(f"{archive}: no voice lines among its {n} entries")
    return lines


def fotaq_speakers(archive: Path | None = None) -> list[Speaker]:
    """One speaker per character of the game's archive (empty if it is not installed); one person for all."""
    archive = archive or FOTAQ_ARCHIVE
    if not archive.is_file():
        return []
    return [Speaker(name, "fotaq", "fotaq", name, "en") for name in sorted(fotaq_lines(archive))]


def _mp3(data: bytes) -> tuple[np.ndarray, int]:
    """A mono MP3 file's samples (float64) and rate."""
    import io

    import av

    with av.open(io.BytesIO(data), format="mp3") as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1, f.samples).mean(axis=0) for f in container.decode(stream)]
        return (np.concatenate(chunks) if chunks else np.zeros(0)).astype(np.float64), stream.rate


DRASCULA_ROOT = Path("/usr/share/scummvm/drascula")
DRASCULA_RATE = 11025  # the voice files are headerless unsigned 8-bit PCM at this rate
_DRASCULA_LINE = re.compile(r"([A-Z]*)(\d+)\.ALS")
# Drascula's voice casts by language folder: English and Spanish are recorded apart (the Italian folder holds the
# English recordings again, so it is left out).
DRASCULA_LANGS = ("en", "es")


def drascula_lines(lang: str, root: Path | None = None) -> dict[str, list[Path]]:
    """The voice files of one language version of Drascula by character (``drascula-<lang>-<prefix>``, the file
    name's letters; no letters: the hero), in line-number order."""
    folder = (root or DRASCULA_ROOT) / lang
    out: dict[str, list[tuple[int, Path]]] = {}
    for path in folder.glob("*.ALS") if folder.is_dir() else ():
        if m := _DRASCULA_LINE.fullmatch(path.name):
            out.setdefault(f"drascula-{lang}-{m.group(1).lower() or 'hero'}", []).append((int(m.group(2)), path))
    return {who: [p for _, p in sorted(lines)] for who, lines in sorted(out.items())}


def drascula_speakers(root: Path | None = None) -> list[Speaker]:
    """One speaker per character and language (empty if the game is not installed); a language's cast is one
    person: the English and the Spanish casts are different people, within a cast it is not known who voiced whom."""
    return [Speaker(who, f"drascula-{lang}", "drascula", who, lang) for lang in DRASCULA_LANGS
            for who in drascula_lines(lang, root)]


BASS_ROOT = Path("/usr/share/scummvm/beneath-a-steel-sky")
BASS_RATE = 11025  # voice lines are unsigned 8-bit PCM at this rate
_BASS_SPEECH = range(50000, 60000)  # the file numbers of the voice lines
_BASS_HEADER = 22  # every file starts with this many bytes of header, never packed


def bass_lines(root: Path | None = None) -> list[bytes]:
    """The voice lines of *Beneath a Steel Sky* (``sky.dnr``: a 32-bit count, then 8-byte entries: file number,
    24-bit offset into ``sky.dsk`` (bit 23 set: in units of 16 bytes) and 24-bit size and flags; bit 23 of the flags
    clear and bit 7 of the file's header flag set: the body is RNC-packed, :func:`training.data.rnc.unpack`), as
    8-bit PCM, in file-number order."""
    from training.data import rnc

    root = root or BASS_ROOT
    index, disk = (root / "sky.dnr").read_bytes(), (root / "sky.dsk").read_bytes()
    (count,) = struct.unpack_from("<I", index)
    if len(index) < 4 + 8 * count:
        raise RuntimeError(f"{root / 'sky.dnr'}: {count} entries announced, {(len(index) - 4) // 8} present")
    lines = []
    for i in range(count):
        entry = index[4 + 8 * i : 12 + 8 * i]
        number = int.from_bytes(entry[:2], "little")
        if number not in _BASS_SPEECH:
            continue
        offset, flags = int.from_bytes(entry[2:5], "little"), int.from_bytes(entry[5:8], "little")
        if offset & 0x800000:
            offset = (offset & 0x7FFFFF) << 4
        data = disk[offset : offset + (flags & 0x3FFFFF)]
        if len(data) <= _BASS_HEADER:
            continue
        packed = not flags >> 23 & 1 and data[0] >> 7 & 1
        lines.append((number, rnc.unpack(data[_BASS_HEADER:]) if packed else data[_BASS_HEADER:]))
    return [body for _, body in sorted(lines)]


def median_pitch(x: np.ndarray, sr: int) -> float | None:
    """The median F0 (60-400 Hz) over the clearly periodic 40-ms frames of ``x``; None if fewer than 3 are."""
    frame, lo, hi = int(0.04 * sr), int(sr / 400), int(sr / 60)
    found = []
    for start in range(0, len(x) - frame, frame):
        seg = x[start : start + frame]
        if seg.std() < 0.05:
            continue
        seg = seg - seg.mean()
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            found.append(sr / lag)
    return float(np.median(found)) if len(found) >= 3 else None


def bass_by_pitch(root: Path | None = None) -> dict[str, list[bytes]]:
    """*Beneath a Steel Sky*'s lines grouped by their median pitch, in bands a quarter of an octave wide
    (``bass-f0-<band's centre in Hz>``): the game does not say who speaks a line, and a band stands in for a speaker
    (two bands are two voices; one band, voices alike in pitch). Lines without a clear pitch are left out. Unpacked
    and grouped once per process."""
    root = root or BASS_ROOT
    return _bass_by_pitch(root, _stamp(root / "sky.dsk"))


@functools.cache
def _bass_by_pitch(root: Path, stamp: tuple[int, int]) -> dict[str, list[bytes]]:
    groups: dict[str, list[bytes]] = {}
    for body in bass_lines(root):
        f0 = median_pitch(_u8_pcm(body), BASS_RATE)
        if f0 is not None:
            band = round(4 * math.log2(f0 / 100.0))
            groups.setdefault(f"bass-f0-{round(100 * 2 ** (band / 4))}", []).append(body)
    return groups


def bass_speakers(root: Path | None = None) -> list[Speaker]:
    """One speaker per pitch band of the game's lines (empty if it is not installed); one person for all."""
    if not ((root or BASS_ROOT) / "sky.dnr").is_file():
        return []
    return [Speaker(name, "bass", "bass", name, "en") for name in sorted(bass_by_pitch(root))]


# The games' speakers come from their installed files, so they are listed only when asked for.
_ACTED_SPEAKERS = {"fotaq": fotaq_speakers, "drascula": drascula_speakers, "bass": bass_speakers}


def _acted_lines(sp: Speaker) -> list[tuple[np.ndarray, int]]:
    """One character's lines in order, as (samples, rate)."""
    if sp.engine == "fotaq":
        return [_mp3(data) for data in fotaq_lines().get(sp.voice, [])]
    if sp.engine == "bass":
        return [(_u8_pcm(body), BASS_RATE) for body in bass_by_pitch().get(sp.voice, [])]
    lines = drascula_lines(sp.language).get(sp.voice, [])
    return [(_u8_pcm(p.read_bytes()), DRASCULA_RATE) for p in lines]


def render_acted(sp: Speaker, out_dir: Path, rng: np.random.Generator,
                 seconds: tuple[float, float] = (3.0, 6.0)) -> tuple[int, float]:
    """Every line of one character of a game (``fotaq``, ``drascula``), as utterances: runs of consecutive lines,
    each trimmed of silence, 0.2-0.6 s apart, until the utterance is 3-6 s long (the last run may be shorter, if at
    least 1 s), each resampled by a factor within +-6 %. Returns (count, seconds)."""
    clips = []
    for x, sr in _acted_lines(sp):
        x = _trim(_resample(x, sr, 1.0), SAMPLE_RATE)
        if len(x) >= SAMPLE_RATE // 5:
            clips.append(x)
    if not clips:
        raise RuntimeError(f"{sp.name}: no usable lines")
    count, total, parts, n = 0, 0.0, [], 0
    target = rng.uniform(*seconds) * SAMPLE_RATE
    for i, x in enumerate(clips):
        parts.append(x)
        n += len(x)
        last = i == len(clips) - 1
        if n >= target or (last and n >= SAMPLE_RATE):
            gaps = [np.zeros(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE)) for _ in parts[1:]]
            y = np.concatenate([v for pair in zip(parts, [*gaps, np.zeros(0)], strict=True) for v in pair])
            y = _resample(y, SAMPLE_RATE, float(rng.uniform(0.94, 1.06)))
            total += _write_utterance(out_dir / f"{count:04d}.wav", y, f"{sp.name}: utterance {count}")
            count, parts, n = count + 1, [], 0
            target = rng.uniform(*seconds) * SAMPLE_RATE
    return count, total


def render_speaker(sp: Speaker, out_dir: Path, n_utts: int, seed: int) -> tuple[int, float]:
    """Write ``n_utts`` utterances of ``sp`` (each two sentences with a pause; a KLettres reader:
    :func:`render_recorded`) to ``out_dir``: (count, seconds)."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(sp.name.encode()).hexdigest()[:8], 16)])
    if sp.engine == "klettres":
        out_dir.mkdir(parents=True, exist_ok=True)
        return render_recorded(sp, out_dir, n_utts, rng)
    if sp.engine in ("fotaq", "drascula", "bass"):  # every line of the character: n_utts does not apply
        out_dir.mkdir(parents=True, exist_ok=True)
        return render_acted(sp, out_dir, rng)
    texts = [sentence(rng, sp.language) for _ in range(2 * n_utts)]
    factors = rng.uniform(0.94, 1.06, size=n_utts)
    pauses = rng.uniform(0.2, 0.7, size=n_utts)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        paths = _synthesise(sp, texts, Path(tmp))
        for i in range(n_utts):
            parts = []
            for p in paths[2 * i : 2 * i + 2]:
                x, sr = sf.read(p, dtype="float64", always_2d=True)
                parts.append(_trim(_resample(x.mean(axis=1), sr, float(factors[i])), SAMPLE_RATE))
            gap = np.zeros(int(pauses[i] * SAMPLE_RATE))
            y = np.concatenate([parts[0], gap, parts[1]])
            total += _write_utterance(out_dir / f"{i:03d}.wav", y, f"{sp.name}: utterance {i}")
    return n_utts, total


# Debian packages whose data the libraries read, by the name their version is recorded under (voices.json).
_DATA_PACKAGES = {"klettres-data": ("klettres-data",), "flight-of-the-amazon-queen": ("flight-of-the-amazon-queen",),
                  "drascula": ("drascula", "drascula-spanish"), "beneath-a-steel-sky": ("beneath-a-steel-sky",)}


def _versions() -> dict[str, str]:
    out = {}
    for name, cmd in (("festival", ["festival", "--version"]), ("flite", ["flite", "--version"]),
                      ("espeak-ng", ["espeak-ng", "--version"]),
                      *((name, ["dpkg-query", "-W", "-f", "${Version}" if len(pkgs) == 1 else "${Package}=${Version} ",
                                *pkgs]) for name, pkgs in _DATA_PACKAGES.items())):
        try:
            out[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out[name] = "missing"
    return out


def build_library(out: str | Path, n_utts: int = 24, n_espeak_utts: int = 12, seed: int = 0, workers: int = 2,
                  engines: Sequence[str] = SYNTHESISERS, progress: bool = False) -> Path:
    """Render every available speaker of ``engines``; returns ``<out>/speakers.csv``. Engines that are not
    installed are skipped with a warning (``apt-get install festival festvox-* flite espeak-ng``; the recorded
    voices: ``klettres-data``)."""
    out = Path(out)
    todo = []
    acted = [sp for engine, listed in _ACTED_SPEAKERS.items() if engine in engines for sp in listed()]
    for sp in [*speakers(seed), *acted]:
        if sp.engine not in engines:
            continue
        if not available(sp.engine):
            log.warning("voices: %s is not installed, skipping %s", sp.engine, sp.name)
            continue
        todo.append(sp)
    if not todo:
        raise RuntimeError(f"voices: none of {', '.join(engines)} is installed")

    def one(sp: Speaker):
        n = n_espeak_utts if sp.engine == "espeak" else n_utts
        try:
            return sp, render_speaker(sp, out / split_of(sp.person) / sp.name, n, seed), ""
        except (subprocess.SubprocessError, OSError, RuntimeError, ValueError) as exc:
            shutil.rmtree(out / split_of(sp.person) / sp.name, ignore_errors=True)
            return sp, (0, 0.0), f"{type(exc).__name__}: {exc}"[:200]

    rows, failed = [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(one, todo)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc="voices", unit="speaker")
        for sp, (count, secs), err in results:
            if err:
                log.warning("voices: %s failed: %s", sp.name, err)
                failed.append({"speaker": sp.name, "error": err})
                continue
            rows.append({**asdict(sp), "split": split_of(sp.person), "utterances": count,
                         "seconds": round(secs, 2)})
    index = out / "speakers.csv"
    with index.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {split: {"speakers": sum(r["split"] == split for r in rows),
                       "persons": len({r["person"] for r in rows if r["split"] == split}),
                       "hours": round(sum(r["seconds"] for r in rows if r["split"] == split) / 3600, 3)}
               for split in SPLITS}
    (out / "voices.json").write_text(json.dumps({"seed": seed, "sample_rate": SAMPLE_RATE, "splits": summary,
                                                 "failed": failed, "versions": _versions()}, indent=1))
    log.info("voices: %s", summary)
    return index


def add_parser(sub) -> None:
    p = sub.add_parser("voices", help="render a speech library for separation training (synthesisers, recorded "
                       "readers, acted dialogue)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--utterances", type=int, default=24, help="per Festival / Flite speaker")
    p.add_argument("--espeak-utterances", type=int, default=12, help="per espeak-ng speaker")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(SYNTHESISERS),
                   help="klettres: the recorded readers of Debian's klettres-data; fotaq: the acted dialogue of "
                   "Debian's flight-of-the-amazon-queen (train); drascula: that of drascula and drascula-spanish "
                   "(test: the English cast, val: the Spanish one); bass: that of beneath-a-steel-sky (train, "
                   "speakers by pitch); each best as a library of its own")
    p.set_defaults(func=lambda a: print(build_library(a.out, a.utterances, a.espeak_utterances, a.seed, a.workers,
                                                      a.engines, progress=True)) or 0)
