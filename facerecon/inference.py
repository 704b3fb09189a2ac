"""Trained networks applied to face crops: the functional core of
`--mode=reconstruct` and `--mode=evaluate`.

`Predictor(config, workdir)` loads the best CoarseNet of a training run and,
when the run trained one, its FineNet (`networks.load_trained`); calling it
on uint8 crops [n, S, S, 3] (S = `Predictor.size`: FineNet's photo size
where the run has a FineNet, else config.image_size; cropped by
`facerecon.data.cropping`) returns a `FaceFits` of numpy arrays, all in the
crop's frame. CoarseNet sees the crops shrunk to config.image_size. One
jitted function does the whole batch; batches are padded to `batch_size`
so it compiles once. How the networks are applied to photos (mirror
images, shifted windows, the pose calibration, sharpening) is one
`FitOptions`. Nothing here imports the training code.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from facerecon import camera
from facerecon import face_models
from facerecon import face_render
from facerecon import morphable
from facerecon import networks
from facerecon import parallel
from facerecon import params as params_lib
from facerecon import rundir
from facerecon.data import normalization
from facerecon.data import preprocessing
from facerecon.models import coarse_net as coarse_net_lib
from facerecon.models import fine as fine_lib


class FaceFits(NamedTuple):
  params: np.ndarray        # [n, P] raw parameters (pose in the crop's pixels)
  landmarks: np.ndarray     # [n, 68, 2] crop pixels (column, row)
  vertices: np.ndarray      # [n, N, 3] model-space dense mesh (shape + expression)
  coarse_depth: np.ndarray  # [n, S, S] CoarseNet's depth, crop pixels; 0 off the face
  depth: np.ndarray         # [n, S, S] FineNet's depth where it ran, else coarse_depth
  mask: np.ndarray          # [n, S, S] bool, the rendered face


def regress(coarse_net, coarse_variables, crops, model, statistics, start_face, size: int,
            sharpen: float = 0.0):
  """Raw parameters [n, P] of CoarseNet's last iteration, in the frame of
  the uint8 crops [n, S, S, 3], which CoarseNet sees shrunk to `size` (its
  config.image_size) and sharpened by `sharpen` (`SHARPEN`). `start_face`:
  CoarseNet's first input render (`coarse_net.render_start`)."""
  images = preprocessing.network_images(crops, statistics, size=size, sharpen=sharpen)
  estimates = coarse_net.apply(coarse_variables, images, model, statistics, train=False,
                               start_face=start_face)
  return camera.params_after_resize(normalization.denormalize_params(estimates[-1], statistics),
                                    size, crops.shape[-2])


def regress_mirrored(coarse_net, coarse_variables, crops, model, statistics, start_face,
                     size: int, mirror: morphable.MirrorMaps | None, sharpen: float = 0.0):
  """`regress`, averaged with the mirrored parameters of the crops' mirror
  images (`morphable.mirror_params`; one batch of both) when `mirror` is
  given: a network's left-right bias cancels (on the AFLW2000-3D dev photos
  the shipped model's NME drops from 10.35 to 9.90)."""
  if mirror is None:
    return regress(coarse_net, coarse_variables, crops, model, statistics, start_face, size,
                   sharpen)
  both = regress(coarse_net, coarse_variables, jnp.concatenate([crops, crops[:, :, ::-1]]),
                 model, statistics, start_face, size, sharpen)
  count = crops.shape[0]
  mirrored = morphable.mirror_params(both[count:], model.layout, mirror, crops.shape[-2])
  return 0.5 * (both[:count] + mirrored)


# The windows a fit is averaged over are moved by this part of the crop's
# side. A fit follows its crop only partly (the network leans to where faces
# sit in its training crops): with the shipped CoarseNet, crops moved by 0.03
# move its landmarks in the photo by 12-58% of the shift. Averaging over four
# windows takes its AFLW2000-3D dev NME (mean of the yaw bins) from 8.26 to
# 8.16 at 0.03; 8.19 at 0.02, 8.29 at 0.045 (docs/reconstruction.md).
WINDOW_SHIFT = 0.03


# CoarseNet's input is sharpened by this amount (`preprocessing.unsharp_mask`,
# a Gaussian of 1 pixel at its input size) when it fits photos. It reads
# sharper photos better: on the AFLW2000-3D dev photos the shipped model's
# mean NME is 7.94 unsharpened, 7.81 at 1, 7.85 at 1.5 and 7.94 at 2 (its
# pose calibration made unsharpened; docs/reconstruction.md).
SHARPEN = 1.0


# The second fit's look at the face (`FitOptions.focus`): what lies outside
# the first fit's outline of the face (the jaw, then the brows back, in the
# 68 landmarks' iBUG order), grown FOCUS_GROWTH times about the landmarks'
# mean, is blurred by a Gaussian of FOCUS pixels at CoarseNet's input size.
# Real photos' surroundings (long hair, clothes, hands, backgrounds) mislead
# a network trained on synthetic faces, most of all in its reading of pitch:
# on the AFLW2000-3D dev photos the shipped model's frontal NME drops from
# 5.27 to 4.95 (by 0.30 on halves held out from the choice of these values;
# docs/reconstruction.md). A profile's outline is not its silhouette, whose
# blur costs far more than it gains: fits turned FOCUS_MAX_YAW or more are
# left unblurred.
FOCUS = 3.0
FOCUS_GROWTH = 1.2
FOCUS_MAX_YAW = 30.0  # degrees
FACE_OUTLINE = tuple(range(17)) + tuple(range(26, 16, -1))


def focused_crops(crops, landmarks, yaw, sigma: float):
  """uint8 crops [n, S, S, 3] with what lies outside each face's outline
  (`FACE_OUTLINE` of its landmarks [n, 68, 2], crop pixels, grown
  `FOCUS_GROWTH` times about their mean) blurred by a Gaussian of `sigma`
  pixels; crops whose |yaw| (radians [n]) is FOCUS_MAX_YAW degrees or more
  are returned as they are."""
  outline = landmarks[:, FACE_OUTLINE]
  centre = jnp.mean(landmarks, axis=1, keepdims=True)
  outline = centre + FOCUS_GROWTH * (outline - centre)
  inside = preprocessing.polygon_masks(outline, crops.shape[1], crops.shape[2])
  inside = inside | (jnp.abs(yaw) >= jnp.radians(FOCUS_MAX_YAW))[:, None, None]
  blurred = jnp.round(preprocessing.gaussian_blur(crops.astype(jnp.float32), sigma))
  return jnp.where(inside[..., None], crops, blurred.astype(crops.dtype))


def regress_second_look(coarse_net, coarse_variables, crops, model, statistics, start_face,
                        size: int, mirror: morphable.MirrorMaps | None, offsets=((0, 0),),
                        sharpen: float = 0.0, upright: bool = True, focus: float = 0.0):
  """`regress_averaged` twice: the second time over the crops that the
  first fit tells how to look at, its parameters in the crops' frame.
  `upright`: the crops turned so that the first fit's head stands upright
  (`camera.in_plane_angle`, `preprocessing.rotate_images`; the fit turned
  back with `camera.pose_after_image_rotation`). CoarseNet reads upright
  faces best, and misreads faces rolled beyond its training range (30
  degrees in configs/real.py) that photos have: on the AFLW2000-3D dev
  photos the frontal faces rolled more than 30 degrees (17 of 269) had a
  mean NME of 11 to 19 against 5 (docs/reconstruction.md). `focus` > 0:
  the surroundings of the first fit's face blurred (`focused_crops`, a
  Gaussian of `focus` pixels at CoarseNet's input size `size`)."""
  average = lambda images: regress_averaged(coarse_net, coarse_variables, images, model,
                                            statistics, start_face, size, mirror, offsets,
                                            sharpen)
  first = average(crops)
  if focus > 0:
    side = crops.shape[-2]
    crops = focused_crops(crops, face_render.project_landmarks(model, first, side),
                          first[..., params_lib.ANGLES][..., 1], focus * side / size)
  if not upright:
    return average(crops)
  angle = camera.in_plane_angle(first[..., :params_lib.NUM_POSE])
  second = average(preprocessing.rotate_images(crops, -angle))
  pose = camera.pose_after_image_rotation(second[..., :params_lib.NUM_POSE], angle,
                                          crops.shape[-2])
  return jnp.concatenate([pose, second[..., params_lib.NUM_POSE:]], axis=-1)


def check_window_shift(shift: float) -> None:
  """Raises ValueError unless `shift` is a window shift: in [0, 0.25)."""
  if not 0.0 <= shift < 0.25:
    raise ValueError(f"window shift must be in [0, 0.25), got {shift}")


@dataclasses.dataclass(frozen=True)
class FitOptions:
  """How a run's networks are applied to photos (`Predictor`; the command
  line's --mirror, --window_shift, --calibrate and --sharpen).

  Attributes:
    mirror: each fit averaged with its mirror image's (`regress_mirrored`)
      where the model is left-right symmetric.
    window_shift: each fit also averaged over four windows of the crop moved
      by this part of its side (`regress_averaged`, `WINDOW_SHIFT`; 0: the
      crop alone).
    calibrate: the run's pose calibration applied where it has one
      (`PoseCalibration`).
    sharpen: how much CoarseNet's input is sharpened (`SHARPEN`; 0: not).
    upright: each fit made again in its crop turned so that the face
      stands upright (`regress_second_look`; twice CoarseNet's time).
    focus: each fit made again with the face's surroundings blurred by a
      Gaussian of this many pixels at CoarseNet's input size
      (`regress_second_look`, `FOCUS`; 0: not). With `upright` too, the
      same second fit does both.

  A value out of range raises ValueError whose message starts with the
  field's name ('sharpen: ...'), so that the command line can name its flag.
  """
  mirror: bool = True
  window_shift: float = WINDOW_SHIFT
  calibrate: bool = True
  sharpen: float = SHARPEN
  upright: bool = True
  focus: float = FOCUS

  def __post_init__(self):
    try:
      check_window_shift(self.window_shift)
    except ValueError as e:
      raise ValueError(f"window_shift: {e}") from None
    if not 0.0 <= self.sharpen <= 5.0:
      raise ValueError(f"sharpen: must be in [0, 5], got {self.sharpen}")
    if not 0.0 <= self.focus <= 10.0:
      raise ValueError(f"focus: must be in [0, 10], got {self.focus}")
    # Recorded (`as_dict`, the evaluation's JSON) as floats, whatever number was given.
    object.__setattr__(self, "window_shift", float(self.window_shift))
    object.__setattr__(self, "sharpen", float(self.sharpen))
    object.__setattr__(self, "focus", float(self.focus))

  def as_dict(self) -> dict:
    """The options as a JSON-ready dict (`FitOptions(**d)` makes them again)."""
    return dataclasses.asdict(self)


def window_offsets(size: int, shift: float) -> tuple[tuple[int, int], ...]:
  """The (column, row) pixel offsets of the windows over a `size` x `size`
  crop that a fit is averaged over: the crop itself, and where `shift` (a
  part of the side) rounds to at least a pixel, four windows moved by it
  right, left, down and up."""
  check_window_shift(shift)
  step = int(round(shift * size))
  if step == 0:
    return ((0, 0),)
  return ((0, 0), (step, 0), (-step, 0), (0, step), (0, -step))


def shifted_windows(crops, offsets):
  """[W * n, S, S, C]: the crops [n, S, S, C] seen through each window of
  `offsets` (static (column, row) pixels; window pixel p shows crop pixel
  p + offset), window-major; beyond the crop its edge pixels repeat, as
  `cropping.crop` repeats the photo's."""
  margin = max(max(abs(dx), abs(dy)) for dx, dy in offsets)
  side = crops.shape[-2]
  padded = jnp.pad(crops, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
  return jnp.concatenate([padded[:, margin + dy:margin + dy + side,
                                 margin + dx:margin + dx + side] for dx, dy in offsets])


def regress_averaged(coarse_net, coarse_variables, crops, model, statistics, start_face,
                     size: int, mirror: morphable.MirrorMaps | None,
                     offsets=((0, 0),), sharpen: float = 0.0):
  """`regress_mirrored` over each window of `offsets` (`shifted_windows`;
  one batch of all), each window's parameters mapped into the crop's frame
  (`camera.pose_after_image_similarity`) and averaged."""
  params = regress_mirrored(coarse_net, coarse_variables, shifted_windows(crops, offsets),
                            model, statistics, start_face, size, mirror, sharpen)
  params = params.reshape((len(offsets), crops.shape[0], params.shape[-1]))
  pose = camera.pose_after_image_similarity(
      params[..., :params_lib.NUM_POSE], 1.0,
      jnp.asarray(offsets, params.dtype)[:, None, :], crops.shape[-2])
  return jnp.concatenate([pose, params[..., params_lib.NUM_POSE:]], axis=-1).mean(axis=0)


class PoseCalibration(NamedTuple):
  """A run's correction of its fits' pitch on real photos, made on labelled
  photos after training (`python -m data_pipeline.calibrate_pose`; kept in
  the run's pose_calibration.json): `pitch` degrees added to a frontal fit's
  pitch, tapering linearly to none at `yaw_taper` degrees of |yaw|. On the
  AFLW2000-3D dev photos the shipped CoarseNet reads frontal faces' pitch
  about 6 degrees too far up (its pitch error's mean) and turned faces' less
  (docs/reconstruction.md)."""
  pitch: float
  yaw_taper: float

  @classmethod
  def from_record(cls, record: dict, where: str) -> "PoseCalibration":
    """From pose_calibration.json's contents (`where` names the file in errors)."""
    values = {}
    for name, low, high in (("pitch", -45.0, 45.0), ("yaw_taper", 1.0, 90.0)):
      value = record.get(name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          low <= value <= high):
        raise ValueError(f"{where}: field '{name}' must be a number in [{low}, {high}], "
                         f"got {value!r}")
      values[name] = float(value)
    return cls(**values)


def calibrated_params(params, model, calibration: PoseCalibration):
  """Parameter vectors [..., P] with `calibration`'s pitch added (weighted by
  the fit's own |yaw|), each face turned about its landmarks' centroid so
  that it stays where it was in the crop."""
  params = jnp.asarray(params)
  pose = params[..., :params_lib.NUM_POSE]
  yaw = jnp.degrees(jnp.abs(pose[..., 1]))
  weight = jnp.clip(1.0 - yaw / calibration.yaw_taper, 0.0, 1.0)
  angles = pose[..., params_lib.ANGLES].at[..., 0].add(jnp.radians(calibration.pitch) * weight)
  centre = morphable.landmarks_from_params(model, params).mean(-2)
  pose = camera.pose_with_angles(pose, angles, centre)
  return jnp.concatenate([pose, params[..., params_lib.NUM_POSE:]], axis=-1)


def crop_size(config, has_fine: bool) -> int:
  """The side of the crops a run's networks take: FineNet's where it has one."""
  return preprocessing.fine_image_size(config) if has_fine else config.image_size


def _predict_fn(coarse_net, fine_net, config, mesh, offsets,
                calibration: PoseCalibration | None, sharpen: float, upright: bool,
                focus: float):
  size = crop_size(config, fine_net is not None)

  def render_fit(params, model, render_model):
    # `render_model`: the model the depth map shows; its surface (`model`,
    # whose vertices come first) is the mesh.
    face = face_render.render_face(render_model, params, None, size, size,
                                   config.render_backend)
    return (face.vertices[..., :model.num_vertices, :], face.depth, face.mask,
            face_render.image_landmarks(model, face.image_vertices))

  render_fit = parallel.map_per_device(render_fit, mesh, num_batched=1)

  def predict(coarse_variables, fine_params, crops, model, statistics, start_face,
              render_model, mirror):
    if upright or focus > 0:
      params = regress_second_look(coarse_net, coarse_variables, crops, model, statistics,
                                   start_face, config.image_size, mirror, offsets, sharpen,
                                   upright, focus)
    else:
      params = regress_averaged(coarse_net, coarse_variables, crops, model, statistics,
                                start_face, config.image_size, mirror, offsets, sharpen)
    if calibration is not None:
      params = calibrated_params(params, model, calibration)
    vertices, depth, mask, landmarks = render_fit(params, model, render_model)
    fine = depth if fine_net is None else fine_lib.split_outputs(fine_net.apply(
        {"params": fine_params}, preprocessing.network_images(crops, statistics), depth,
        mask))[0]
    return FaceFits(params, landmarks, vertices, depth, fine, mask)

  return jax.jit(predict)


class Predictor:
  """The trained networks of a run directory, ready to apply to crops."""

  def __init__(self, config, workdir: str | None, batch_size: int = 16, fine: bool = True,
               *, options: FitOptions | None = None):
    """`workdir` None: CoarseNet freshly initialised, no FineNet (for
    timings). `fine` False: the run's FineNet is left out (CoarseNet's crops
    and depth; for outputs its detail does not change). `options`: how the
    networks are applied (`FitOptions`; None: the defaults), kept as
    `self.options`; `self.mirror` (the mirror maps) is None where the model
    is not left-right symmetric or mirroring was not asked, and
    `self.calibration` None where the run has no pose calibration or it was
    not asked."""
    options = FitOptions() if options is None else options
    if not isinstance(options, FitOptions):
      raise TypeError(f"options must be a FitOptions, got {type(options).__name__}")
    self.options = options
    self.mesh = parallel.make_mesh()
    self.batch_size = self._whole_devices(batch_size)
    trained = (networks.fresh(config, self.mesh) if workdir is None
               else networks.load_trained(config, rundir.RunDir(workdir), self.mesh))
    if not fine:
      trained = trained._replace(fine_net=None, fine_params=None)
    self.model, self.statistics = trained.model, trained.statistics
    self.coarse_net = trained.coarse_net
    self.has_fine = trained.fine_net is not None
    self.size = crop_size(config, self.has_fine)  # the crops' side
    self.window_offsets = window_offsets(self.size, options.window_shift)
    self.calibration = None
    if options.calibrate and workdir is not None:
      run = rundir.RunDir(workdir)
      record = rundir.read_pose_calibration(run)
      if record is not None:
        self.calibration = PoseCalibration.from_record(record, run.pose_calibration)
    replicated = parallel.replicated(self.mesh)
    self._arguments = jax.device_put((trained.coarse_variables, trained.fine_params), replicated)
    self.coarse_variables, self.fine_params = self._arguments
    self.fine_net = trained.fine_net
    # CoarseNet's first input render is the same for every face: made once here.
    start_face = jax.jit(coarse_net_lib.render_start, static_argnums=(2, 3, 4))(
        self.model, self.statistics, config.image_size, config.image_size,
        config.render_backend)
    # FineNet refines depth maps of the whole model (eyes, teeth and mouth
    # interior included: `training.fine`); without it the surface's suffice.
    render_model = face_models.load(config.model) if self.has_fine else self.model
    self.mirror = morphable.mirror_maps(self.model) if options.mirror else None
    self._context = jax.device_put((self.model, self.statistics, start_face, render_model,
                                    self.mirror), replicated)
    self.start_face = self._context[2]
    self._predict = _predict_fn(trained.coarse_net, trained.fine_net, config, self.mesh,
                                self.window_offsets, self.calibration, options.sharpen,
                                options.upright, options.focus)

  @property
  def sharpen(self) -> float:
    """How much CoarseNet's input is sharpened (`FitOptions.sharpen`)."""
    return self.options.sharpen

  def _whole_devices(self, batch_size: int) -> int:
    """`batch_size` rounded up to a multiple of the devices (at least one each)."""
    devices = self.mesh.size
    return -(-max(1, batch_size) // devices) * devices

  def __call__(self, crops: np.ndarray, batch_size: int | None = None) -> FaceFits:
    """FaceFits of uint8 crops [n, S, S, 3], any n (run `batch_size` at a
    time: the Predictor's unless given; each size compiles once)."""
    crops = np.asarray(crops)
    batch_size = self.batch_size if batch_size is None else self._whole_devices(batch_size)
    if crops.ndim != 4 or crops.shape[1:] != (self.size, self.size, 3):
      raise ValueError(f"crops must be [n, {self.size}, {self.size}, 3], got {crops.shape}")
    parts = []
    for start in range(0, len(crops), batch_size):
      chunk = crops[start:start + batch_size]
      padded = np.zeros((batch_size,) + crops.shape[1:], np.uint8)
      padded[:len(chunk)] = chunk
      fits = self._predict(*self._arguments, parallel.shard_batch(padded, self.mesh),
                           *self._context)
      parts.append(jax.tree.map(lambda x, n=len(chunk): np.asarray(x)[:n], fits))
    if not parts:
      raise ValueError("no crops to reconstruct")
    return FaceFits(*(np.concatenate(field) for field in zip(*parts)))
