"""The independent evaluation's voices: Debian's asterisk-core-sounds, grouped by the person who recorded them.

    apt-get install asterisk-core-sounds-{en,es,fr,it,ru}-wav
    python benchmarks/asterisk_voices.py --out data/asterisk_voices
    python benchmarks/separation_table.py --model shipped=model_store/models \\
        --data independent=synthav:seed=9000,n=100,kind=speech,voices=data/asterisk_voices \\
        --out benchmarks/results/separation_independent.json

These recordings are **reserved for independent evaluation**: nothing in training/ reads them, and no run is
trained, tuned or selected on them. Each language's prompts were read by one person (US and Mexican Spanish by
the same Allison), so the folder holds one sub-folder per person (symbolic links to the installed files):
``plain`` and ``two_faces`` clips pair two different people, ``same_pitch`` clips one person with herself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SOUNDS = Path("/usr/share/asterisk/sounds")


def person_of(folder: str) -> str:
    """``en_US_f_Allison`` -> ``Allison`` (the packages name their folders language_region_sex_person)."""
    return folder.split("_", 3)[-1]


def build(out: Path, sounds: Path = SOUNDS) -> dict[str, int]:
    langs = sorted(p for p in sounds.iterdir() if p.is_dir()) if sounds.is_dir() else []
    if not langs:
        raise SystemExit(f"{sounds}: no asterisk sounds (apt-get install asterisk-core-sounds-en-wav ...)")
    counts: dict[str, int] = {}
    for lang in langs:
        target = out / person_of(lang.name) / lang.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(lang.resolve(), target_is_directory=True)
        counts[person_of(lang.name)] = counts.get(person_of(lang.name), 0) + sum(1 for _ in lang.rglob("*.wav"))
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/asterisk_voices")
    p.add_argument("--sounds", default=str(SOUNDS))
    args = p.parse_args()
    print(build(Path(args.out), Path(args.sounds)))


if __name__ == "__main__":
    main()
