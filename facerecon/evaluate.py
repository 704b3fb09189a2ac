"""`--mode=evaluate`: the field's benchmark and the synthetic test split.

    python main.py --mode=evaluate --workdir=RUN --input=AFLW2000/
    python main.py --mode=evaluate --workdir=RUN --input=synthetic

AFLW2000-3D-style folders (<stem>.jpg + <stem>.mat, `facerecon.data.mat_folders`),
the protocol of 3DDFA and later papers:
- NME (%): the mean 2-D distance of the 68 landmarks (pt3d_68) to the
  predicted ones, divided by sqrt(w * h) of the ground-truth landmarks'
  bounding box, per photo; averaged within the absolute-yaw bins [0, 30],
  (30, 60] and (60, 90] degrees (yaw: Pose_Para's gamma; beyond 90 counts
  as 90), and the mean of the three bins' means.
- Two crops: from the ground-truth landmarks (`cropping.square_from_landmarks`
  at `GROUND_TRUTH_FILL`: a square the landmark box's larger side fills 0.56
  of, centred 0.145 of that side above the box centre: the synthetic
  training faces' framing, a little tighter) and from the face detector
  (`detector.crop_squares`; the detected box whose centre lies inside the
  landmark box, best first). Photos where the detector finds no such face
  are counted as missed and left out of its NME.
- Head pose (`pose_table`): the fits' (pitch, yaw, roll) against
  Pose_Para's, in degrees, per crop rule: the mean absolute error per angle
  and their mean (photos with a label angle beyond 99 degrees left out, as
  the head-pose literature does), and the mean signed error per angle. The
  labels' angles are the BFM's frame: a model whose own frame is tilted
  from it carries that tilt in the signed error (ICT-FaceKit's head: about
  3 degrees of pitch, docs/reconstruction.md).

The synthetic test split (config.coarse.data.source 'synthetic': faces from
config.synthetic.test_seed, a seed neither training nor validation uses;
'tfds': the data set's 'test' split): parameter error (normalised units), mean
vertex distance (raw and after similarity alignment, / face size), depth
error, landmark NME (image-size and, as on AFLW2000-3D, box-normalised),
each against the mean-face baseline. For a run with a FineNet, also its
detail on DETAIL_BATCHES batches of those faces at its size, against their
true detailed depth: depth and normal error of CoarseNet's and FineNet's
depth maps (means over all the faces' pixels), and the normal error
split between the albedo's edges (the ALBEDO_EDGE_SHARE of each face's
pixels where its albedo changes most: brows, lips, irises, moles, makeup)
and the rest. A FineNet that turns colour into relief does worse than
CoarseNet at the albedo's edges.

The table is printed and written as `<workdir>/evaluation_<name>.json`.
"""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from facerecon import export
from facerecon import face_models
from facerecon import face_render
from facerecon import inference
from facerecon import losses
from facerecon import networks
from facerecon import parallel
from facerecon import rundir
from facerecon import shading
from facerecon.data import cropping
from facerecon.data import mat_folders
from facerecon.data import normalization
from facerecon.data import photos
from facerecon.data import sources
from facerecon.data import synthetic
from facerecon.training import coarse

YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))
POSE_LIMIT = 99.0  # head-pose protocol: photos with a label angle beyond it are left out
ANGLES = ("pitch", "yaw", "roll")
CHUNK = 64  # photos read and fitted at a time
DETAIL_BATCHES = 8
ALBEDO_EDGE_SHARE = 0.1


def landmark_box_size(truth) -> np.ndarray:
  """sqrt(w * h) of each face's landmark box, NME's unit: [N, L, 2] -> [N]."""
  truth = np.asarray(truth, np.float64)
  extent = truth.max(axis=1) - truth.min(axis=1)
  return np.sqrt(extent[:, 0] * extent[:, 1])


def landmark_nme(predicted, truth) -> np.ndarray:
  """Per-face NME: mean point distance / sqrt(w * h) of the true landmarks'
  box. predicted, truth [N, L, 2] -> [N]."""
  predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
  return np.linalg.norm(predicted - truth, axis=-1).mean(axis=1) / landmark_box_size(truth)


def bin_name(low: float, high: float) -> str:
  return f"[{low:g},{high:g}]"


def yaw_bins(yaw_degrees) -> list[np.ndarray]:
  """Per `YAW_BINS` bin, which faces fall in it by their absolute yaw
  (beyond 90 degrees counts as 90; [0, 30], then (30, 60], (60, 90])."""
  yaw = np.minimum(np.abs(np.asarray(yaw_degrees, np.float64)), 90.0)
  return [((yaw > low) | (low == 0.0)) & (yaw <= high) for low, high in YAW_BINS]


def yaw_table(nme, yaw_degrees) -> dict:
  """NME (%) per absolute-yaw bin, their counts, and the mean of the bin means."""
  nme = np.asarray(nme, np.float64)
  table = {}
  for (low, high), inside in zip(YAW_BINS, yaw_bins(yaw_degrees)):
    name = bin_name(low, high)
    table[name] = 100.0 * float(nme[inside].mean()) if inside.any() else float("nan")
    table[f"count {name}"] = int(inside.sum())
  means = [table[bin_name(low, high)] for low, high in YAW_BINS]
  table["mean"] = float(np.mean(means))  # NaN when a bin is empty, as it should read
  table["all"] = 100.0 * float(nme.mean()) if nme.size else float("nan")
  return table


def random_halves(count: int, splits: int, seed: int = 0):
  """(chosen on, measured on): index arrays of two random halves of `count`
  photos, `splits` random splits each used both ways (for held-out checks
  of a choice made on labelled photos)."""
  rng = np.random.default_rng(seed)
  for _ in range(splits):
    order = rng.permutation(count)
    halves = order[:count // 2], order[count // 2:]
    yield halves
    yield halves[::-1]


def pose_table(predicted, truth) -> dict:
  """Head-pose errors (degrees) of predicted against labelled (pitch, yaw,
  roll) [N, 3], the protocol of the head-pose literature on AFLW2000-3D:
  photos whose labels have an angle beyond POSE_LIMIT are left out; the
  mean absolute error per angle and their mean ('MAE'), and the mean signed
  error per angle ('bias ...': a model whose frame or reading is tilted)."""
  predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
  kept = np.all(np.abs(truth) <= POSE_LIMIT, axis=-1)
  error = (predicted[kept] - truth[kept] + 180.0) % 360.0 - 180.0  # wrapped
  table = {"count": int(kept.sum())}
  for k, name in enumerate(ANGLES):
    table[name] = float(np.abs(error[:, k]).mean()) if kept.any() else float("nan")
    table[f"bias {name}"] = float(error[:, k].mean()) if kept.any() else float("nan")
  table["MAE"] = float(np.mean([table[name] for name in ANGLES]))
  return table


def face_over_truth(boxes, truth) -> int | None:
  """The index of the first (best) detection box (x, y, w, h) whose centre
  lies within the true landmarks' bounds [L, 2+], or None: the detection
  that is the labelled face."""
  low, high = truth[:, :2].min(axis=0), truth[:, :2].max(axis=0)
  for index, (x, y, w, h) in enumerate(boxes):
    centre = np.array([x + w / 2, y + h / 2])
    if np.all(centre >= low) and np.all(centre <= high):
      return index
  return None


def _detected_square(detector, photo, truth):
  """The crop square of the detected face over the true landmarks, or None."""
  boxes, squares, _ = detector.crop_squares(photo)
  index = face_over_truth(boxes, truth)
  return None if index is None else squares[index]


@jax.jit
def _shading_residuals(crops, coarse_depth, fine_depth, mask):
  """(CoarseNet's, FineNet's) shading residual summed over uint8 crops
  [n, S, S, 3]: `losses.shading_residual` against the grey photo with a
  uniform albedo (the first-order light solved per crop takes its level)."""
  intensity = shading.luminance(crops.astype(jnp.float32) / 255.0)
  albedo = jnp.ones_like(intensity)
  count = crops.shape[0]
  return tuple(count * losses.shading_residual(depth, mask, intensity, albedo)
               for depth in (coarse_depth, fine_depth))


def read_labelled_photos(pairs, skipped: list):
  """(image path, labels, photo) of each readable (image, .mat) pair; the
  others are appended to `skipped` ({'file', 'reason'}). Only the labels'
  pose and landmarks are meant to be used: they may come from another model
  than the run's (AFLW2000-3D: the BFM)."""
  for image_path, mat_path in pairs:
    try:
      labels = mat_folders.read_labels(mat_path, layout=None)
      photo = photos.read_photo(image_path)
    except (ValueError, KeyError, OSError) as e:
      skipped.append({"file": image_path, "reason": str(e)})
      continue
    yield image_path, labels, photo


class LabelledCrop(NamedTuple):
  """One labelled photo's face in one crop."""
  crop: np.ndarray            # [S, S, 3] uint8
  square: cropping.Square     # where it is in the photo
  landmarks: np.ndarray       # [68, 2] the labelled landmarks in the photo
  angles: np.ndarray          # [3] the label's (pitch, yaw, roll), degrees


def labelled_crops(pairs, size: int, skipped: list,
                   ground_truth_fill: float = cropping.GROUND_TRUTH_FILL, detector=None):
  """Per chunk of CHUNK (image, .mat) pairs: ({'truth': [LabelledCrop] in
  the ground-truth crops, and with a `detector` 'detector': [LabelledCrop]
  in its crop of the labelled face}, how many labelled faces it missed).
  Unreadable photos and malformed .mat files go to `skipped`."""
  for start in range(0, len(pairs), CHUNK):
    crops, missed = {"truth": [], "detector": []}, 0
    for _, labels, photo in read_labelled_photos(pairs[start:start + CHUNK], skipped):
      landmarks = labels.landmarks[:, :2]
      angles = np.degrees(labels.params[:3])  # pitch, yaw, roll
      squares = {"truth": cropping.square_from_landmarks(landmarks, ground_truth_fill)}
      if detector is not None:
        squares["detector"] = _detected_square(detector, photo, landmarks)
        missed += squares["detector"] is None
      for rule, square in squares.items():
        if square is not None:
          crops[rule].append(LabelledCrop(cropping.crop(photo, square, size), square, landmarks,
                                          angles))
    yield crops, missed


def _no_photo_error(folder: str, skipped: list, what: str) -> ValueError:
  return ValueError(f"no photo in {folder} could be {what}: "
                    + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]))


class LabelledFits(NamedTuple):
  """A predictor's fits of labelled photos in their ground-truth crops."""
  fits: inference.FaceFits   # [F] in the crops' frame
  squares: list              # [F] the crop squares (`cropping.square_from_landmarks`)
  labels: np.ndarray         # [F, 68, 2] the labelled landmarks in the photos
  angles: np.ndarray         # [F, 3] the labels' (pitch, yaw, roll), degrees
  skipped: list              # {'file', 'reason'} of the photos left out

  @property
  def yaw(self) -> np.ndarray:
    return self.angles[:, 1]


def fit_labelled_photos(predictor: inference.Predictor, folder: str,
                        ground_truth_fill: float = cropping.GROUND_TRUTH_FILL) -> LabelledFits:
  """The predictor's fits of the photos of an AFLW2000-3D-style folder in the
  evaluation's ground-truth crops (for commands that calibrate a run on
  them). Unreadable photos and malformed .mat files are in 'skipped'."""
  parts, faces, skipped = [], [], []
  for crops, _ in labelled_crops(mat_folders.find_pairs(folder), predictor.size, skipped,
                                 ground_truth_fill):
    if crops["truth"]:
      parts.append(predictor(np.stack([face.crop for face in crops["truth"]])))
      faces += crops["truth"]
  if not parts:
    raise _no_photo_error(folder, skipped, "fitted")
  fits = inference.FaceFits(*(np.concatenate(field) for field in zip(*parts)))
  return LabelledFits(fits, [face.square for face in faces],
                      np.stack([face.landmarks for face in faces]),
                      np.stack([face.angles for face in faces]), skipped)


def evaluate_folder(config, workdir: str, folder: str, detector=None,
                    batch_size: int = 32, options: inference.FitOptions | None = None,
                    ground_truth_fill: float = cropping.GROUND_TRUTH_FILL) -> dict:
  """AFLW2000-3D-style evaluation of the run in `workdir` on `folder`;
  `detector` (a `facerecon.detect.FaceDetector` or None) adds the detector
  crops; `options`: how the networks are applied (`inference.FitOptions`;
  None: the defaults), recorded in the results (whether the fits were
  mirrored, the window shift, the sharpening, the pose calibration applied);
  `ground_truth_fill`: the ground-truth crops' fill (`cropping`).
  Unreadable photos and malformed .mat files are reported in
  'skipped' and left out. A run with a FineNet also gets the mean shading
  residual of CoarseNet's and FineNet's depth on the ground-truth crops
  (`_shading_residuals`): FineNet's detail should explain the photos'
  shading better."""
  pairs = mat_folders.find_pairs(folder)
  options = inference.FitOptions() if options is None else options
  predictor = inference.Predictor(config, workdir, batch_size, options=options)
  size = predictor.size  # the crops' side
  # Per crop rule: NME, label yaw, predicted and labelled angles (degrees).
  results = {rule: ([], [], [], []) for rule in ("truth", "detector")}
  residual_sums = np.zeros(2)  # CoarseNet's, FineNet's
  skipped, missed = [], 0
  chunks = labelled_crops(pairs, size, skipped, ground_truth_fill, detector)
  for crops, chunk_missed in tqdm.tqdm(chunks, total=-(-len(pairs) // CHUNK), desc="photos",
                                       unit="chunk"):
    missed += chunk_missed
    for rule, faces in crops.items():
      if not faces:
        continue
      images = np.stack([face.crop for face in faces])
      fits = predictor(images)
      predicted = np.stack([cropping.to_photo(points, face.square, size)
                            for points, face in zip(fits.landmarks, faces)])
      results[rule][0].extend(landmark_nme(predicted, np.stack([face.landmarks for face in faces])))
      results[rule][1].extend(face.angles[1] for face in faces)
      # A crop is a similarity without rotation: the angles are the photo's.
      results[rule][2].extend(np.degrees(np.asarray(fits.params)[:, :3]))
      results[rule][3].extend(face.angles for face in faces)
      if rule == "truth" and predictor.has_fine:
        residual_sums += np.asarray(_shading_residuals(images, fits.coarse_depth, fits.depth,
                                                       fits.mask))
  if not results["truth"][0]:
    raise _no_photo_error(folder, skipped, "evaluated")
  # What the fits were: mirrored only where asked and the model is symmetric,
  # and calibrated only where asked and the run has a calibration.
  out = {"photos": len(pairs), "skipped": skipped, "mirror": predictor.mirror is not None,
         "window_shift": options.window_shift,
         "sharpen": options.sharpen,
         "upright": options.upright,
         "focus": options.focus,
         "pose_calibration": (None if predictor.calibration is None
                              else predictor.calibration._asdict()),
         "ground_truth_crops": yaw_table(*results["truth"][:2]),
         "ground_truth_crops_pose": pose_table(*results["truth"][2:])}
  if detector is not None:
    out["detector_crops"] = {**yaw_table(*results["detector"][:2]), "missed": missed}
    if results["detector"][0]:
      out["detector_crops_pose"] = pose_table(*results["detector"][2:])
  if predictor.has_fine:
    coarse, fine = residual_sums / len(results["truth"][0])
    out["shading_residual"] = {"coarse": float(coarse), "fine": float(fine)}
  return out


def evaluate_synthetic(config, workdir: str, num_batches: int = 32) -> dict:
  """Metrics of the run's best CoarseNet on `num_batches` test batches of
  config.coarse.eval_batch_size synthetic faces, against the mean-face baseline."""
  mesh = parallel.make_mesh()
  net, variables, model, statistics = networks.load_coarse(
      config, networks.coarse_run(config, rundir.RunDir(workdir)), mesh)
  size = config.image_size
  landmarks_of = jax.jit(lambda estimate, model, statistics: face_render.project_landmarks(
      model, normalization.denormalize_params(estimate, statistics), size))
  context = jax.device_put((model, statistics), parallel.replicated(mesh))
  # The baseline's estimate is 0 for every face: one mean face, projected once.
  baseline = np.asarray(landmarks_of(jnp.zeros_like(statistics.param_mean)[None], *context))
  nme = {"": [], "baseline_": []}

  def add_nme(index, host, estimate):
    nme[""].append(landmark_nme(np.asarray(landmarks_of(estimate, *context)),
                                host["landmarks"]))
    nme["baseline_"].append(landmark_nme(
        np.broadcast_to(baseline, host["landmarks"].shape), host["landmarks"]))

  sums, count = coarse.sum_evaluation(config, statistics,
                                      coarse.evaluation_fn(net, config, mesh), variables, mesh,
                                      context, "test", num_batches, add_nme)
  out = {key: value / count for key, value in sums.items()}
  for name, values in nme.items():
    out[f"{name}landmark_nme_box_percent"] = 100.0 * float(np.mean(np.concatenate(values)))
  out["faces"] = count * config.coarse.eval_batch_size
  return out


def albedo_edges(albedo, region, share: float = ALBEDO_EDGE_SHARE) -> np.ndarray:
  """[B, H, W] bool: in each face's `region`, the `share` of its pixels where
  the albedo [B, H, W, 3] changes most (the gradient of its luminance
  relative to the luminance)."""
  region = np.asarray(region, bool)
  luminance = np.asarray(shading.luminance(jnp.asarray(albedo)))
  d_row, d_col = np.gradient(luminance, axis=(1, 2))
  change = np.hypot(d_row, d_col) / np.maximum(luminance, 0.02)
  edges = np.zeros_like(region)
  for k in range(len(region)):
    values = change[k][region[k]]
    if values.size:
      threshold = max(np.quantile(values, 1.0 - share), 1e-6)  # flat albedo has none
      edges[k] = region[k] & (change[k] >= threshold)
  return edges


def _angles(depth, mask, true_depth, true_mask):
  """(per-pixel angle in degrees between two depth maps' normals, where
  both have all four neighbours)."""
  normals, interior = shading.depth_normals(jnp.asarray(depth), jnp.asarray(mask))
  true_normals, true_interior = shading.depth_normals(jnp.asarray(true_depth),
                                                      jnp.asarray(true_mask))
  cosine = np.clip(np.sum(np.asarray(normals) * np.asarray(true_normals), axis=-1), -1.0, 1.0)
  return np.degrees(np.arccos(cosine)), np.asarray(interior & true_interior)


def evaluate_detail(config, workdir: str, num_batches: int = DETAIL_BATCHES,
                    batch_size: int = 32) -> dict:
  """CoarseNet's and FineNet's depth maps against the true detailed depth of
  synthetic test faces at FineNet's size (module docstring): the networks
  as trained, neither sharpened nor calibrated (both are for real photos)."""
  predictor = inference.Predictor(config, workdir, batch_size,
                                  options=inference.FitOptions(calibrate=False, sharpen=0.0))
  size, model = predictor.size, face_models.load(config.model)
  prior = sources.face_prior(config)
  stream = sources.SyntheticStream(model, size, batch_size, config.synthetic.test_seed, prior,
                                   per_host=False, fields=("image", "fine_depth", "mask"))
  sums = {}

  def add(key, values, weights):
    total, count = sums.get(key, (0.0, 0.0))
    sums[key] = (total + float(np.sum(values * weights)), count + float(np.sum(weights)))

  for index in range(num_batches):
    batch = next(stream)
    keys = synthetic.sample_keys(config.synthetic.test_seed, index * batch_size, batch_size)
    albedo = np.asarray(synthetic.albedo_maps(model, keys, prior, size, size,
                                              config.render_backend))
    fits = predictor(batch["image"])
    true_depth, true_mask = batch["fine_depth"], batch["mask"]
    for name, depth in (("coarse", fits.coarse_depth), ("fine", fits.depth)):
      both = fits.mask & true_mask
      add(f"{name}_depth_error", np.abs(depth - true_depth) / size, both)
      angles, region = _angles(depth, fits.mask, true_depth, true_mask)
      edges = albedo_edges(albedo, region)
      add(f"{name}_normal_error", angles, region)
      add(f"{name}_normal_error_albedo_edges", angles, edges)
      add(f"{name}_normal_error_elsewhere", angles, region & ~edges)
  out = {key: total / max(count, 1.0) for key, (total, count) in sums.items()}
  out["faces"] = num_batches * batch_size
  out["size"] = size
  return out


def _crop_rule_rows(results: dict, suffix: str, cells) -> list[str]:
  """One titled line per crop rule with results under '<rule>_crops<suffix>'."""
  return [f"{title:<22}" + cells(results[key + suffix])
          for key, title in (("ground_truth_crops", "ground-truth crops"),
                             ("detector_crops", "detector crops"))
          if key + suffix in results]


def format_table(name: str, results: dict) -> str:
  """The results as a plain-text table."""
  lines = [f"evaluation on {name}"]
  if "ground_truth_crops" in results:
    bins = [bin_name(low, high) for low, high in YAW_BINS]
    lines.append(f"{'NME (%)':<22}" + "".join(f"{b:>10}" for b in bins)
                 + f"{'mean':>10}{'all':>10}")
    lines += _crop_rule_rows(results, "", lambda row: "".join(
        f"{row[b]:>10.2f}" for b in bins) + f"{row['mean']:>10.2f}{row['all']:>10.2f}")
    lines.append(f"{'photos per bin':<22}" + "".join(
        f"{results['ground_truth_crops']['count ' + b]:>10d}" for b in bins))
    if "detector_crops" in results:
      lines.append(f"detector missed {results['detector_crops']['missed']} of "
                   f"{results['photos'] - len(results['skipped'])} photos")
    lines.append(f"{'pose error (deg)':<22}" + "".join(f"{n:>10}" for n in ANGLES)
                 + f"{'MAE':>10}{'photos':>10}   mean signed (pitch, yaw, roll)")
    lines += _crop_rule_rows(results, "_pose", lambda row: "".join(
        f"{row[n]:>10.2f}" for n in ANGLES) + f"{row['MAE']:>10.2f}{row['count']:>10d}   "
        + ", ".join(f"{row['bias ' + n]:+.2f}" for n in ANGLES))
    if "shading_residual" in results:
      residual = results["shading_residual"]
      lines.append(f"shading residual (grey levels^2, ground-truth crops): CoarseNet "
                   f"{residual['coarse']:.2f}, FineNet {residual['fine']:.2f}")
    if results["skipped"]:
      lines.append(f"skipped {len(results['skipped'])} unreadable files (listed in the JSON)")
  else:
    lines.append(f"{'metric':<28}{'CoarseNet':>12}{'mean face':>12}")
    for key in sorted(results):
      if key.startswith("baseline_") or f"baseline_{key}" not in results:
        continue
      lines.append(f"{key:<28}{results[key]:>12.4f}{results['baseline_' + key]:>12.4f}")
    lines.append(f"over {results['faces']} test faces")
    detail = results.get("detail")
    if detail:
      lines.append(f"detail at {detail['size']}x{detail['size']} over {detail['faces']} "
                   f"test faces{'':<4}{'CoarseNet':>12}{'FineNet':>12}")
      for key, title, form in (("depth_error", "depth error", ".5f"),
                               ("normal_error", "normal error (deg)", ".2f"),
                               ("normal_error_albedo_edges", "  at albedo edges", ".2f"),
                               ("normal_error_elsewhere", "  elsewhere", ".2f")):
        lines.append(f"{title:<28}{detail['coarse_' + key]:>12{form}}"
                     f"{detail['fine_' + key]:>12{form}}")
  return "\n".join(lines)


def run(config, workdir: str, input_path: str, detector=None,
        batch_size: int = 32, results_dir: str | None = None,
        options: inference.FitOptions | None = None) -> tuple[str, dict]:
  """Evaluates on `input_path` (a folder, or 'synthetic'); writes the
  results as evaluation_<name>.json in `results_dir` (default: the run) and
  returns (table text, results). `options`: for a folder (`evaluate_folder`);
  the synthetic test split does without (`evaluate_synthetic`, `evaluate_detail`)."""
  if input_path == "synthetic":
    name, results = "synthetic_test", evaluate_synthetic(config, workdir)
    if rundir.RunDir(workdir).fine.has_best():
      results["detail"] = evaluate_detail(config, workdir)
  else:
    name = os.path.basename(os.path.normpath(input_path))
    results = evaluate_folder(config, workdir, input_path, detector, batch_size, options)
  out = rundir.RunDir(results_dir or workdir)
  export.write_json(out.evaluation(name), _json_safe(results))
  return format_table(name, results), results


def _json_safe(value):
  """NaN (an empty yaw bin) -> None, which JSON can hold."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_json_safe(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value
