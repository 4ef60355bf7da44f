"""Build the demo mixture shipped in data/: speech + kitchen noise at 5 dB SNR.

Run by hand from the repository root (tests never run it; its outputs are committed):

    .venv/bin/python data/make_demo.py [--shared ../shared/data]

It writes, as 16 kHz mono 16-bit WAV (overwriting):

    data/demo_mix.wav                  the mixture, 6 s
    data/demo/demo_mix/speech.wav      reference: LibriSpeech 5703-47212-0000, 0-6 s
    data/demo/demo_mix/noise.wav       reference: Speech Commands doing_the_dishes, 30-36 s

The references are quantised to 16 bits first and the mixture is their integer sum,
so ``speech + noise == mix`` holds sample for sample in the files themselves (the
script checks this after reading them back, and refuses to clip).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from demux import io

RATE = 16000
DURATION_S = 6.0
SNR_DB = 5.0
PEAK = 0.9  # mixture peak ceiling, full scale 1.0
SPEECH = ("speech/libri1_5703-47212-0000.flac", 0.0)  # (file under shared/data, start in s)
NOISE = ("speech/doing_the_dishes.wav", 30.0)  # clatter around 32-38 s keeps the noise non-stationary
FULL_SCALE = 32768

HERE = Path(__file__).resolve().parent


def excerpt(path: Path, start_s: float) -> np.ndarray:
    """``DURATION_S`` seconds of channel 0 of ``path`` from ``start_s``, at ``RATE``: ``(T,)`` float64."""
    signal = io.read(path)
    data = io.resample(signal.data[:1], signal.sample_rate, RATE)[0].astype(np.float64)
    first, length = round(start_s * RATE), round(DURATION_S * RATE)
    if first + length > data.size:
        raise SystemExit(f"{path}: shorter than {start_s + DURATION_S:g} s")
    return data[first : first + length]


def quantise(x: np.ndarray) -> np.ndarray:
    """Float at full scale 1.0 -> int32 16-bit codes (int32 so that sums cannot wrap)."""
    return np.round(x * FULL_SCALE).astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared" / "data")
    args = parser.parse_args()

    speech = excerpt(args.shared / SPEECH[0], SPEECH[1])
    noise = excerpt(args.shared / NOISE[0], NOISE[1])
    noise *= np.sqrt(np.sum(speech**2) / np.sum(noise**2) / 10 ** (SNR_DB / 10))
    gain = min(1.0, PEAK / np.abs(speech + noise).max())

    speech_q, noise_q = quantise(gain * speech), quantise(gain * noise)
    mix_q = speech_q + noise_q
    if np.abs(mix_q).max() >= FULL_SCALE:
        raise SystemExit("the mixture would clip; lower PEAK")

    outputs = {
        HERE / "demo_mix.wav": mix_q,
        HERE / "demo" / "demo_mix" / "speech.wav": speech_q,
        HERE / "demo" / "demo_mix" / "noise.wav": noise_q,
    }
    for path, codes in outputs.items():
        io.write(path, codes[None] / FULL_SCALE, RATE, subtype="PCM_16", overwrite=True)

    back = {path.stem: np.round(io.read(path).data[0] * FULL_SCALE).astype(np.int32) for path in outputs}
    if not np.array_equal(back["speech"] + back["noise"], back["demo_mix"]):
        raise SystemExit("read-back check failed: speech + noise != mix")
    snr = 10 * np.log10(np.sum(back["speech"] ** 2.0) / np.sum(back["noise"] ** 2.0))
    peak = np.abs(back["demo_mix"]).max() / FULL_SCALE
    print(f"wrote {len(outputs)} files: {DURATION_S:g} s at {RATE} Hz, SNR {snr:.2f} dB, mixture peak {peak:.3f}")


if __name__ == "__main__":
    main()
