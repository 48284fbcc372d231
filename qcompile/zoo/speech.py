"""Data for the shipped silero voice activity detector: real speech from Debian's `espeak-ng` (several
voices, speeds and pitches), resampled to 16 kHz and laid into a stream with pauses, background noise
at 5-30 dB SNR and gain changes, then cut into the 512-sample chunks (plus the 64 samples of context
before each) that silero's own wrapper feeds its model.

The model is recurrent: each chunk's `state` input is the state the float model left after the chunk
before (computed with onnxruntime), so a per-chunk evaluation compares both engines from the same
state; the recurrent run of the integer library on its own states is checked separately by the tests.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError

RATE, CHUNK, CONTEXT = 16000, 512, 64
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A compiler turns a program written by people into instructions a machine can run.",
    "It was raining in the morning, but the afternoon was bright and warm.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "The train leaves at seven fifteen from platform number three.",
    "Numbers such as one thousand two hundred and thirty four are read out slowly.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Turn left at the second traffic light and keep going until you see the river.",
    "Quantization maps real numbers onto a small set of integers with a scale and a zero point.",
    "Good evening, this is the news at nine o'clock.",
)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-us+f3", "en-gb+m3", "en-us+f4")


def espeak_speech(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """float32 mono 16 kHz speech of `text` synthesised by espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise QCompileError("real speech for the VAD tests comes from espeak-ng: apt install espeak-ng")
    with tempfile.TemporaryDirectory(prefix="qcompile-speech-") as tmp:
        wav = Path(tmp) / "s.wav"
        cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0 or not wav.is_file():
            raise QCompileError(f"espeak-ng failed: {res.stderr.strip()[:200]}")
        with wave.open(str(wav)) as w:
            rate, frames = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(frames, np.int16).astype(np.float32) / 32768.0
    from scipy.signal import resample_poly

    g = np.gcd(RATE, rate)
    return resample_poly(x, RATE // g, rate // g).astype(np.float32)


def speech_stream(utterances: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(samples, is_speech per sample): utterances separated by 0.3-1.5 s pauses, with noise at a
    random SNR, a random gain per utterance, noise only in the pauses."""
    rng = np.random.default_rng(seed)
    parts, labels = [], []
    for i in range(utterances):
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        voice = VOICES[i % len(VOICES)]
        speech = espeak_speech(text, voice, int(rng.integers(130, 200)), int(rng.integers(30, 70)))
        speech *= rng.uniform(0.2, 1.0) / max(float(np.abs(speech).max()), 1e-6)
        pause = np.zeros(int(rng.uniform(0.3, 1.5) * RATE), np.float32)
        parts += [pause, speech]
        labels += [np.zeros(len(pause), bool), np.abs(speech) > 0.02 * np.abs(speech).max()]
    signal = np.concatenate(parts + [np.zeros(RATE // 2, np.float32)])
    speech_mask = np.concatenate(labels + [np.zeros(RATE // 2, bool)])
    power = float(np.mean(signal[speech_mask] ** 2)) if speech_mask.any() else 1e-4
    snr_db = rng.uniform(5, 30)
    noise = rng.standard_normal(len(signal)).astype(np.float32) * np.sqrt(power / 10 ** (snr_db / 10))
    hum = 0.3 * np.sqrt(power / 10 ** (snr_db / 10)) * np.sin(2 * np.pi * 50 * np.arange(len(signal)) / RATE)
    return np.clip(signal + noise + hum.astype(np.float32), -1, 1).astype(np.float32), speech_mask


def vad_chunks(model_path: Path, stream: np.ndarray) -> dict[str, np.ndarray]:
    """The stream as the model's inputs, chunk by chunk, with the float model's own states:
    {"input": N x 576, "state": N x 2 x 1 x 128, "prob": N} (prob: fp32's speech probability)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros(CONTEXT, np.float32)
    inputs, states, probs = [], [], []
    for k in range(len(stream) // CHUNK):
        x = np.concatenate([context, stream[k * CHUNK : (k + 1) * CHUNK]])[None]
        prob, new_state = sess.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
        inputs.append(x[0])
        states.append(state)
        probs.append(float(prob.reshape(-1)[0]))
        state, context = new_state, x[0, -CONTEXT:]
    return {"input": np.stack(inputs), "state": np.stack(states), "prob": np.array(probs, np.float32)}
