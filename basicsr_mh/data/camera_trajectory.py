"""Random hand-held camera trajectories for GoPro-style blur synthesis.

Units: time in frames of the high-speed video (GoPro: 1/240 s; frame ``k`` is at time ``k``), positions in output
pixels. A trajectory moves the camera over a burst of ``N`` frames with

- a 2-D translation with a random initial velocity (speed uniform in ``[speed_min, speed_max]`` px/frame, direction
  uniform) and a constant random acceleration (magnitude uniform in ``[0, accel_max]`` px/frame², direction uniform),
- a small in-plane rotation: angular velocity ``~ N(0, rot_speed_std)`` deg/frame,
- hand jitter: independent Gaussian random walks of the position (``jitter_std`` px per frame step, each axis) and of
  the angle (``rot_jitter_std`` deg per frame step), knotted at the frame times and linearly interpolated between.

Poses are relative to the label frame, the middle frame ``N // 2`` (GoPro's choice, also for even ``N``): its pose
is the identity, so the sharp label is an exact crop of the photo. Because the camera accelerates and jitters, where
the label sits along the blur path is random, which is the paper's argument (§2.2, §3.1) for a multi-head output.

A trajectory is sampled at ``S`` (odd) sub-frame times per frame, evenly spread over the frame's interval; the
sub-frame in the middle of frame ``k`` is at time ``k`` exactly, and ``S = 1`` is GoPro's plain average of ``N``
instantaneous frames. ``S > 1`` only makes the blurred image a smoother integral of the same motion (no ghosting);
the frames themselves (hence the label) do not depend on ``S``.
"""
import math
import numpy as np
from dataclasses import dataclass


@dataclass(frozen=True)
class TrajectoryConfig:
    """Ranges of the random camera motion (see the module docstring for units).

    ``max_subframe_step``: with ``subframes=0`` (auto), the number of sub-frames per frame is the smallest odd ``S``
    for which no image point moves more than this many pixels between consecutive sub-frames (at most
    ``max_subframes``).
    """
    speed_min: float = 0.5
    speed_max: float = 2.0
    accel_max: float = 0.1
    rot_speed_std: float = 0.05
    jitter_std: float = 0.3
    rot_jitter_std: float = 0.01
    max_subframe_step: float = 1.0
    max_subframes: int = 15

    def __post_init__(self):
        for key in ('speed_min', 'speed_max', 'accel_max', 'rot_speed_std', 'jitter_std', 'rot_jitter_std'):
            if not getattr(self, key) >= 0:
                raise ValueError(f'trajectory {key} must be >= 0, got {getattr(self, key)}.')
        if self.speed_max < self.speed_min:
            raise ValueError(f'trajectory speed_max ({self.speed_max}) must be >= speed_min ({self.speed_min}).')
        if not self.max_subframe_step > 0 or int(self.max_subframes) < 1:
            raise ValueError('trajectory max_subframe_step must be > 0 and max_subframes >= 1.')


@dataclass(frozen=True)
class MotionParams:
    """The random draws that define one camera motion over ``num_frames`` frames.

    Attributes:
        num_frames (int): N >= 1.
        velocity (tuple[float, float]): (vx, vy) px/frame at time 0 (the first frame).
        accel (tuple[float, float]): (ax, ay) px/frame².
        rot_speed (float): deg/frame.
        jitter (np.ndarray): (N + 2, 2) random-walk positions (px) at the knot times ``-1, 0, ..., N``.
        rot_jitter (np.ndarray): (N + 2,) random-walk angles (deg) at the same knots.
    """
    num_frames: int
    velocity: tuple
    accel: tuple
    rot_speed: float
    jitter: np.ndarray
    rot_jitter: np.ndarray

    @classmethod
    def static(cls, num_frames):
        """A camera that does not move: every frame equals the label frame."""
        return cls.linear(num_frames, (0.0, 0.0))

    @classmethod
    def linear(cls, num_frames, velocity, accel=(0.0, 0.0), rot_speed=0.0):
        """A jitter-free motion with the given velocity (px/frame), acceleration and angular speed."""
        return cls(
            int(num_frames), tuple(map(float, velocity)), tuple(map(float, accel)), float(rot_speed),
            np.zeros((num_frames + 2, 2)), np.zeros(num_frames + 2))

    @property
    def label_frame(self):
        """Index of the label frame among the N frames: ``N // 2`` (the middle; GoPro's pick for even N)."""
        return self.num_frames // 2

    def poses(self, times):
        """Camera poses at ``times`` (T,), relative to the label frame: shifts (T, 2) px and angles (T,) deg."""
        times = np.asarray(times, dtype=np.float64)
        knots = np.arange(-1, self.num_frames + 1, dtype=np.float64)

        def raw(t):
            t = np.atleast_1d(t)
            shift = (
                np.outer(t, self.velocity) + 0.5 * np.outer(t * t, self.accel) +
                np.stack([np.interp(t, knots, self.jitter[:, i]) for i in range(2)], axis=1))
            angle = self.rot_speed * t + np.interp(t, knots, self.rot_jitter)
            return shift, angle

        shifts, angles = raw(times)
        ref_shift, ref_angle = raw(float(self.label_frame))
        return shifts - ref_shift, angles - ref_angle


def sample_motion(rng, num_frames, cfg=None):
    """Draw a :class:`MotionParams` for ``num_frames`` frames from ``rng`` (``np.random.Generator``) and ``cfg``.

    The number and order of draws do not depend on the values in ``cfg`` (zero ranges still draw), so one seed gives
    the same stream whatever the configuration.
    """
    cfg = cfg or TrajectoryConfig()
    n = int(num_frames)
    if n < 1:
        raise ValueError(f'num_frames must be >= 1, got {n}.')
    speed = rng.uniform(cfg.speed_min, cfg.speed_max)
    direction = rng.uniform(0.0, 2 * math.pi)
    accel = rng.uniform(0.0, cfg.accel_max)
    accel_dir = rng.uniform(0.0, 2 * math.pi)
    rot_speed = rng.normal(0.0, 1.0) * cfg.rot_speed_std
    steps = rng.normal(0.0, 1.0, size=(n + 1, 2)) * cfg.jitter_std
    rot_steps = rng.normal(0.0, 1.0, size=n + 1) * cfg.rot_jitter_std
    jitter = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    rot_jitter = np.concatenate([[0.0], np.cumsum(rot_steps)])
    return MotionParams(n, (speed * math.cos(direction), speed * math.sin(direction)),
                        (accel * math.cos(accel_dir), accel * math.sin(accel_dir)), float(rot_speed), jitter,
                        rot_jitter)


def subframe_times(num_frames, subframes):
    """(N * S,) times: frame ``k`` owns ``k + (s - S // 2) / S`` for ``s < S``; ``S`` must be odd."""
    if subframes < 1 or subframes % 2 == 0:
        raise ValueError(f'subframes must be a positive odd number, got {subframes}.')
    return (np.arange(num_frames * subframes, dtype=np.float64) - subframes // 2) / subframes


def _corner_offsets(size):
    h, w = size
    return np.array([[-(w - 1) / 2, -(h - 1) / 2], [(w - 1) / 2, -(h - 1) / 2], [-(w - 1) / 2, (h - 1) / 2],
                     [(w - 1) / 2, (h - 1) / 2]])


def _rotate(points, angles_deg):
    """points (P, 2), angles (T,) -> (T, P, 2) rotated points."""
    rad = np.deg2rad(angles_deg)[:, None]
    cos, sin = np.cos(rad), np.sin(rad)
    x, y = points[None, :, 0], points[None, :, 1]
    return np.stack([cos * x - sin * y, sin * x + cos * y], axis=-1)


def auto_subframes(params, size, max_step=1.0, max_subframes=15):
    """Smallest odd S such that no crop corner moves more than ``max_step`` px per sub-frame (capped)."""
    times = np.arange(params.num_frames, dtype=np.float64)
    shifts, angles = params.poses(times)
    corners = _rotate(_corner_offsets(size), angles) + shifts[:, None, :]
    step = float(np.linalg.norm(np.diff(corners, axis=0), axis=-1).max()) if params.num_frames > 1 else 0.0
    s = max(1, math.ceil(step / max_step - 1e-9))
    s += 1 - s % 2
    cap = int(max_subframes) - (1 - int(max_subframes) % 2)
    return max(1, min(s, cap))


@dataclass(frozen=True)
class CameraTrajectory:
    """A motion sampled at sub-frame times.

    Attributes:
        params (MotionParams): the motion.
        subframes (int): S, odd.
        times (np.ndarray): (T,) with T = N * S.
        shifts (np.ndarray): (T, 2) camera shift (x, y) in px relative to the label frame.
        angles (np.ndarray): (T,) camera roll in degrees relative to the label frame.
        label_index (int): index into ``times`` of the label frame (time ``N // 2``); its pose is the identity.
        frame_indices (np.ndarray): (N,) indices into ``times`` of the N frames' own (middle) sub-frames.
    """
    params: MotionParams
    subframes: int
    times: np.ndarray
    shifts: np.ndarray
    angles: np.ndarray
    label_index: int
    frame_indices: np.ndarray

    @classmethod
    def from_params(cls, params, subframes=1):
        """Sample ``params`` at ``subframes`` (odd) sub-frames per frame."""
        times = subframe_times(params.num_frames, subframes)
        shifts, angles = params.poses(times)
        frame_indices = np.arange(params.num_frames) * subframes + subframes // 2
        label_index = int(frame_indices[params.label_frame])
        shifts[label_index], angles[label_index] = 0.0, 0.0  # exact identity (removes float round-off)
        return cls(params, int(subframes), times, shifts, angles, label_index, frame_indices)

    @property
    def num_frames(self):
        return self.params.num_frames

    def __len__(self):
        return len(self.times)

    def matrices(self, size, origin=(0.0, 0.0)):
        """(T, 2, 3) affine maps from output pixel (x, y, 1) to source pixel, for ``cv2.WARP_INVERSE_MAP``.

        ``size`` = (h, w) of the output; ``origin`` = (x, y) of the label crop's top-left corner in the source.
        The camera rotates about the crop centre: ``src = origin + c + R(angle) (dst - c) + shift``.
        """
        h, w = size
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        rad = np.deg2rad(self.angles)
        cos, sin = np.cos(rad), np.sin(rad)
        mats = np.empty((len(self), 2, 3))
        mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1] = cos, -sin, sin, cos
        rc = np.stack([cos * c[0] - sin * c[1], sin * c[0] + cos * c[1]], axis=1)
        mats[:, :, 2] = np.asarray(origin, dtype=np.float64) + c - rc + self.shifts
        mats[self.label_index] = [[1, 0, origin[0]], [0, 1, origin[1]]]
        return mats

    def footprint(self, size):
        """(x0, y0, x1, y1): bounding box, relative to the label crop's top-left, of every source pixel used."""
        mats = self.matrices(size)
        h, w = size
        corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=np.float64)
        pts = np.einsum('tij,pj->tpi', mats, corners).reshape(-1, 2)
        return (*pts.min(axis=0), *pts.max(axis=0))

    def stats(self, size):
        """Blur statistics in output pixels (JSON-able dict).

        ``blur_length_px``: path length of the crop centre over the exposure; ``blur_extent_px``: largest distance
        between two positions of the crop centre; ``max_corner_shift_px``: largest displacement of a crop corner
        from the label frame (includes rotation); ``label_offset_px``: distance from the label position to the mean
        position over the exposure (how far the label is from the blur's centroid: the randomness of the target);
        ``rotation_range_deg``: spread of the roll angle.
        """
        p = self.shifts
        extent = 0.0
        if len(p) > 1:
            extent = float(np.sqrt(((p[:, None, :] - p[None, :, :])**2).sum(-1)).max())
        corners = _rotate(_corner_offsets(size), self.angles) + p[:, None, :] - _corner_offsets(size)[None]
        vel, acc = self.params.velocity, self.params.accel
        return {
            'num_frames': self.num_frames,
            'subframes': self.subframes,
            'label_frame': self.params.label_frame,
            'blur_length_px': round(float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()), 3),
            'blur_extent_px': round(extent, 3),
            'max_corner_shift_px': round(float(np.linalg.norm(corners, axis=-1).max()), 3),
            'label_offset_px': round(float(np.linalg.norm(p.mean(axis=0))), 3),
            'rotation_range_deg': round(float(self.angles.max() - self.angles.min()), 4),
            'speed_px_per_frame': round(math.hypot(*vel), 4),
            'accel_px_per_frame2': round(math.hypot(*acc), 4),
            'rot_speed_deg_per_frame': round(self.params.rot_speed, 5),
        }


def sample_trajectory(rng, num_frames, size, cfg=None, subframes=0):
    """Draw a random :class:`CameraTrajectory` of ``num_frames`` frames for an output of ``size`` = (h, w).

    ``subframes``: odd S, or 0 to pick it with :func:`auto_subframes` from ``cfg.max_subframe_step``.
    """
    cfg = cfg or TrajectoryConfig()
    params = sample_motion(rng, num_frames, cfg)
    if not subframes:
        subframes = auto_subframes(params, size, cfg.max_subframe_step, cfg.max_subframes)
    return CameraTrajectory.from_params(params, subframes)
