"""`--mode=reconstruct`: 3D faces from photos.

    python main.py --mode=reconstruct --workdir=runs/quickstart --input=photos/ --output=out/

For every photo (a file, or every image below a folder): detect the faces
(`facerecon.detect`), crop each as the training data was cropped
(`facerecon.data.cropping`), fit CoarseNet (and FineNet when the run trained
one) in batches (`facerecon.inference`), and write, next to the photo's
relative path in `--output`, the files `facerecon.outputs` describes (per
face `<stem>_face<k>.obj/.ply/_depth/_landmarks/.json`, per photo
`<stem>_overlay.png/_pncc.png/_normals.png`). `outputs` (`--outputs`) picks
among `outputs.OUTPUTS` which are written (default: all).

Videos (given, or found below a folder) are reconstructed frame by frame
with faces tracked between frames (`facerecon.video`; default outputs
`video.DEFAULT_OUTPUTS`: landmarks, JSON and the overlay video).

Photos and videos that cannot be read and those with no face are reported
and skipped; `summary.json` in `--output` lists them (and each video's
frame counts), and main.py exits with status 1 if there were any.
"""

import collections
import concurrent.futures
import dataclasses
import itertools
import os

import numpy as np
import tqdm

from facerecon import detect
from facerecon import export
from facerecon import fileio
from facerecon import inference
from facerecon import outputs as outputs_lib
from facerecon import video
from facerecon.data import cropping
from facerecon.data import photos

LOAD_AHEAD = 4             # photos read and detected ahead of the networks


@dataclasses.dataclass
class Summary:
  photos: int = 0
  faces: int = 0
  failures: list = dataclasses.field(default_factory=list)  # (photo or video, reason)
  videos: list = dataclasses.field(default_factory=list)    # video.VideoSummary per video read

  def photos_read(self) -> int:
    """Photos (not videos) that were read and had a face."""
    return self.photos - sum(not photos.is_video(path) for path, _ in self.failures)

  def as_dict(self) -> dict:
    return {"photos": self.photos, "faces": self.faces,
            "videos": [v.as_dict() for v in self.videos],
            "failed": [{"photo": p, "reason": r} for p, r in self.failures]}


def _output_stems(paths: list[str], bases: list[str], output_dir: str) -> list[str]:
  """Each photo's output path without suffix: its path below `base` (the
  folder given, or a photo's own folder)."""
  stems = [os.path.splitext(os.path.relpath(p, b))[0] for p, b in zip(paths, bases)]
  # a.jpg and a.png in one folder: keep both, told apart by their suffixes.
  counts = collections.Counter(stems)
  repeated = {s for s in stems if counts[s] > 1}
  return [os.path.join(output_dir, s + ("_" + os.path.splitext(p)[1][1:] if s in repeated
                                        else "")) for s, p in zip(stems, paths)]


def _load(path: str, stem: str, detector, size: int, max_faces: int) -> outputs_lib.Photo:
  """Reads, detects and crops one photo (runs in a worker thread; OpenCV
  releases the GIL). Raises ValueError saying why a photo is skipped."""

  photo = photos.read_photo(path)
  height, width = photo.shape[:2]
  if detector is None:  # the photo is a face crop already
    boxes = np.zeros((0, 4))
    squares = [cropping.centred_square(height, width)]
  else:
    boxes, squares, _ = detector.crop_squares(photo)
    boxes, squares = boxes[:max_faces], squares[:max_faces]
    if not len(boxes):
      raise ValueError("no face found")
  return outputs_lib.photo_from_image(photo, path, stem, boxes, squares, size)


def _reason(path: str, error: Exception) -> str:
  """Why a photo or video failed, without its path (the summary lists it beside)."""
  return str(error).removeprefix(f"{path}: ")


def reconstruct(config, workdir: str, input_path: str | list[str], output_dir: str, *,
                batch_size: int = 16, detector="blazeface", max_faces: int = 8,
                progress: bool = True, outputs=None, smoothing: bool = True,
                redetect_every: int = video.REDETECT_EVERY,
                options: inference.FitOptions | None = None) -> Summary:
  """Reconstructs every face in `input_path` (a photo or a folder, or a list
  of them) with the networks trained in `workdir`, writing into
  `output_dir`. `detector`: a detector of `facerecon.detect` or its name
  (`detect.DETECTORS`; 'none' or None: each photo is a face crop already).
  `outputs`: which files (`outputs.OUTPUTS`; None: all for photos,
  `video.DEFAULT_OUTPUTS` for videos). `smoothing`, `redetect_every`: see
  `facerecon.video`; `options`: how the networks are applied
  (`inference.FitOptions`; None: the defaults).
  Returns the Summary (also written as `<output_dir>/summary.json`)."""
  photo_outputs = outputs_lib.check_outputs(outputs_lib.OUTPUTS if outputs is None else outputs)
  video_outputs = video.DEFAULT_OUTPUTS if outputs is None else photo_outputs
  if isinstance(detector, str):
    detector = detect.from_name(detector)
  paths, bases = [], []
  for given in [input_path] if isinstance(input_path, str) else input_path:
    found = photos.find_photos(given, videos=True)
    paths += found
    bases += [given if os.path.isdir(given) else os.path.dirname(given)] * len(found)
  stems = _output_stems(paths, bases, output_dir)
  videos = [(p, s) for p, s in zip(paths, stems) if photos.is_video(p)]
  stills = [(p, s) for p, s in zip(paths, stems) if not photos.is_video(p)]
  # FineNet runs only for outputs that carry its detail (video's defaults do not).
  predictors = {}

  def predictor_for(outputs):
    fine = outputs_lib.needs_detail(outputs)
    if fine not in predictors:
      predictors[fine] = inference.Predictor(config, workdir, batch_size, fine=fine,
                                             options=options)
    return predictors[fine]

  predictor = predictor_for(photo_outputs) if stills else None
  size = predictor.size if stills else None  # the photos' crops' side
  summary = Summary(photos=len(stills))
  os.makedirs(output_dir, exist_ok=True)

  def fit(faces):
    # A photo's faces may span two batches: it is written once all are fitted.
    fits = predictor(np.stack([photo.crops[k] for photo, k in faces]))
    fitted = outputs_lib.render_fits(fits, predictor.model, predictor.batch_size, size)
    for (photo, _), face in zip(faces, fitted):
      photo.fitted.append(face)
      if len(photo.fitted) == len(photo.squares):
        images = outputs_lib.write_photo(photo, predictor.model, size, config.model,
                                         predictor.has_fine, photo_outputs)
        for name, image in images.items():
          fileio.write_png_atomic(f"{photo.stem}_{name}.png", image)
        summary.faces += len(photo.squares)

  waiting, loads = [], collections.deque()  # waiting: (photo, k) of faces to fit, in order
  jobs = iter(stills)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    # A few photos read and detected ahead of the networks, no more (photos can be huge).
    for path, stem in itertools.islice(jobs, LOAD_AHEAD):
      loads.append((path, pool.submit(_load, path, stem, detector, size, max_faces)))
    for _ in tqdm.trange(len(stills), desc="photos", unit="photo", disable=not progress):
      path, load = loads.popleft()
      for next_path, next_stem in itertools.islice(jobs, 1):
        loads.append((next_path, pool.submit(_load, next_path, next_stem, detector, size,
                                             max_faces)))
      try:
        photo = load.result()
      except (ValueError, OSError) as e:
        summary.failures.append((path, _reason(path, e)))
        continue
      waiting += [(photo, k) for k in range(len(photo.squares))]
      while len(waiting) >= predictor.batch_size:  # whole batches only: no padding
        fit(waiting[:predictor.batch_size])
        del waiting[:predictor.batch_size]
    if waiting:
      fit(waiting)
  for path, stem in tqdm.tqdm(videos, desc="videos", unit="video", disable=not progress):
    try:
      summary.videos.append(video.reconstruct_video(
          path, stem, predictor_for(video_outputs), detector, model_name=config.model,
          max_faces=max_faces, outputs=video_outputs, smoothing=smoothing,
          redetect_every=redetect_every))
      summary.faces += summary.videos[-1].faces
    except (ValueError, OSError) as e:
      summary.failures.append((path, _reason(path, e)))
  export.write_json(os.path.join(output_dir, "summary.json"), summary.as_dict())
  return summary
