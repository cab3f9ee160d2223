"""Small media and table files in the layouts the builders read: mp4 videos, wav audio, face
crops (.npy) and CSV tables."""
import csv
import os

import cv2
import numpy as np
import soundfile

FRAME = 24      # side of the fixture videos
RATE = 8000     # written wav rate


def write_video(path, seed, frames=5):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (FRAME, FRAME))
  for _ in range(frames):
    writer.write(rng.integers(0, 255, (FRAME, FRAME, 3), dtype=np.uint8))
  writer.release()


def write_audio(path, seed, seconds=0.4):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  soundfile.write(str(path), 0.3 * rng.standard_normal(int(RATE * seconds)), RATE,
                  subtype="PCM_16")


def write_faces(path, seed, count=4):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  np.save(path, rng.integers(0, 255, (count, 20, 20, 3), dtype=np.uint8))


def write_media(folder, names, video_dir="video", audio_dir="audio", faces=False):
  for i, name in enumerate(names):
    write_video(folder / video_dir / f"{name}.mp4", i)
    write_audio(folder / audio_dir / f"{name}.wav", 100 + i)
    if faces:
      write_faces(folder / "openface_face" / name / f"{name}.npy", 200 + i)


def write_csv(path, header, rows):
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
