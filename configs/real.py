"""CoarseNet for real photos: the ICT-FaceKit head (`config.model='ict'`),
photoreal synthetic faces (procedural skin, hair, brows, beards, eyes and
teeth; coloured second-order light with highlights; photo backgrounds,
clutter, long hair, glasses, headwear, occluders, blur, grey and JPEG; yaw to 90
degrees), MobileNet v1 (width 0.5) at 96x96, one iteration: 3DDFA_V2's
class of network, at a smaller input than its 120x120 because on 2 CPU
cores the step at 96 is 1.6 times faster (benchmarks/train.py). The
package ships a model trained with it (`--mode=reconstruct` and `--mode=evaluate` use it
when no --workdir is given; its commands, a run and fine-tunings of it as the
config grew: docs/training.md):

    python main.py --config=configs/real.py --workdir=runs/real

It resumes when run again. Evaluate on AFLW2000-3D style photos with
`python main.py --mode=evaluate --workdir=runs/real --input=DIR`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model = "ict"
  config.image_size = 96

  prior = config.synthetic.prior
  prior.expression_active = 0.15
  # No faces start from a smile, an open mouth or surprise
  # (synthetic.EXPRESSION_ARCHETYPES): with half of them, the network opened
  # the mouths of the dev photos' closed ones (docs/reconstruction.md).
  prior.expression_archetypes = 0.0
  # The dev photos' frontal faces sit at a median pitch of -10 degrees in
  # the ICT head's frame (quartiles -16.5, -2.3; the frame is tilted 2.6
  # against the BFM's), and a network trained on pitches centred on 0 read
  # them too far up: the range (and its middle third, where the frontal
  # faces are drawn) is centred on -15 (docs/reconstruction.md).
  prior.pitch = (-60.0, 30.0)
  prior.yaw = (-90.0, 90.0)
  prior.roll = (-30.0, 30.0)
  prior.frontal_fraction = 0.5      # AFLW2000-3D: two thirds within 30 degrees of yaw
  prior.frame_by_landmarks = True   # framed as photos are cropped (data.cropping)
  # The landmark box's larger side over the image side: detectors' crops
  # make it 0.52, ground-truth landmarks' 0.56 (facerecon/data/cropping.py).
  prior.fill = (0.45, 0.6)
  prior.shift = 0.05
  prior.ambient = (0.3, 0.8)
  prior.directional = (0.2, 1.2)
  prior.fill_light = (0.0, 0.4)
  prior.light_colour = 0.1
  prior.second_order_light = True
  prior.specular = True
  prior.gain = (0.9, 1.1)
  prior.contrast = (0.7, 1.0)
  prior.noise = 0.02
  prior.procedural_albedo = True
  prior.hair = 0.85
  prior.photo_backgrounds = 0.75
  prior.clutter = 0.4
  prior.occluders = 0.2
  prior.long_hair = 0.35
  prior.glasses = 0.15
  prior.headwear = 0.15
  prior.blur = 1.2
  prior.grey = 0.1
  prior.jpeg = 0.5
  # Photos' luminance spread and brightness (docs/data.md: renders are
  # flatter; these ranges match the dev photos' crops in distribution).
  prior.luminance_std = (45.0, 120.0)
  prior.luminance_mean = (35.0, 150.0)
  # Their colour: the face's and the background's saturation (docs/data.md).
  prior.saturation = (40.0, 160.0)
  prior.background_saturation = (10.0, 150.0)
  prior.detail = (0.0, 0.0)         # CoarseNet only: no fine detail needed

  coarse = config.coarse
  coarse.num_iterations = 1
  coarse.backbone = "mobilenet_v1"
  coarse.backbone_kwargs = {"width": 0.5}
  coarse.batch_size = 64
  coarse.num_train_steps = 20_000
  coarse.learning_rate = 1e-3
  coarse.warmup_steps = 500
  coarse.loss.pose = 1.0
  coarse.loss.shape = 0.1
  coarse.loss.expression = 0.1
  coarse.loss.vertex = 10.0
  coarse.loss.render = 0.0
  coarse.loss.landmark = 10.0
  coarse.log_every = 50
  coarse.eval_every = 1000
  coarse.eval_batches = 4
  coarse.eval_batch_size = 64
  coarse.checkpoint_every = 250
  coarse.best_metric = "landmark_nme"
  # FineNet over the shipped CoarseNet: not trained by default (steps 0).
  # The package ships the FineNet this trains (data_pipeline.ship_run), over
  # the CoarseNet of the time (before the pitch and colour ranges), then
  # fine-tuned over the newer one
  # (--config.fine.init_from=runs/real_fine, 500 steps; docs/training.md):
  #   python main.py --config=configs/real.py --workdir=runs/real_fine \
  #     --config.coarse.num_train_steps=0 \
  #     --config.fine.coarse_workdir=facerecon/assets/run --config.fine.num_train_steps=2000 \
  #     --config.synthetic.prior.wrinkles="(0.004,0.012)"
  # 128-pixel photos (CoarseNet sees them shrunk to 96), the faces' true
  # detail learnt (with wrinkles where faces fold, deepened by age and
  # expression: the shipped CoarseNet was trained without), narrow for the CPU.
  fine = config.fine
  fine.num_train_steps = 0
  fine.image_size = 128
  fine.widths = (16, 32, 64)
  fine.head = (32, 32, 16)
  fine.batch_size = 16
  fine.learning_rate = 3e-3
  fine.warmup_steps = 50
  fine.eval_every = 500
  fine.checkpoint_every = 250
  fine.eval_batch_size = 32
  fine.best_metric = "normal_error"
  fine.loss.update(sfs=0.0, fidelity=0.0, smoothness=0.0, depth=1.0, normal=100.0)
  return config
