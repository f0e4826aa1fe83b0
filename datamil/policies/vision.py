"""Image-conditioned policies: a shared observation encoder in front of any registered head policy.

    features = [spatial-softmax keypoints of a conv net, per camera] ++ [normalized state]     (encode)
    loss_i   = head.loss_fn({obs/state: features_i, action_i, ...})                           (loss)

The head is an ordinary registered policy (bc_gaussian, bc_mlp, diffusion) built on the feature
vector. Its loss is the one per-sample loss definition: the image policy adds an encoder, never a
second copy of a loss. The same split gives the frozen-feature estimator mode for free: cache the
encoder's features once and every estimator runs on `policy.head` alone (datamil.datamodels.features).

Encoder (robomimic's conv stack + spatial softmax, plain torch: torchvision does not load on this torch
build): uint8 (B, H, W, 3) -> float in [-1, 1] -> convs (GELU: smooth, for predictive metagradients)
-> K keypoint heat maps -> expected (x, y) per map (Levine et al. 2016) -> linear -> (B, F).

Augmentation (DrQ random shift; Kostrikov et al. 2021): pad by `shift_pad` pixels (edge replicate),
crop back at an integer offset. The offset of a frame is a hash of (step id, aug_seed), like the
diffusion noise: the loss stays a fixed function of the parameters (what estimators differentiate
and replay), while neighbouring frames still see different shifts. It applies only in train mode;
`policy.eval()` (used for acting and for the surrogate) turns it off.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamil.data.normalization import NormStats
from datamil.data.store import TrajectoryStore
from datamil.errors import DataError, DatamilError
from datamil.policies.base import ACTION, INDEX, OBS_STATE_KEY, POLICIES, Batch, Normalizer, Policy
from datamil.policies.diffusion import hash_uniform
from datamil.policies.mlp import ACTIVATIONS
from datamil.registry import configured

OBS_PREFIX = "obs/"
_SHIFT_STREAM = 7  # hash stream of the augmentation offsets (the diffusion loss uses streams 0 and 1)


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature maps -> (B, 2K) expected image coordinates of K learned keypoint maps."""

    def __init__(self, channels: int, keypoints: int, height: int, width: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(channels, keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, maps: Tensor) -> Tensor:
        heat = self.project(maps).flatten(2)  # (B, K, H*W)
        return (torch.softmax(heat, dim=-1) @ self.grid).flatten(1)  # (B, K, 2) -> (B, 2K)


class ConvEncoder(nn.Module):
    """One camera: uint8 (B, H, W, 3) -> (B, feature_dim). Input size fixed at (H, W) = `size`."""

    def __init__(
        self,
        size: tuple[int, int],
        channels: Sequence[int] = (32, 32, 32),
        strides: Sequence[int] = (2, 2, 1),
        keypoints: int = 32,
        feature_dim: int = 64,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, (h, w) = 3, size
        for c_out, stride in zip(channels, strides, strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride), ACTIVATIONS[activation]()]
            c_in, h, w = c_out, (h - 3) // stride + 1, (w - 3) // stride + 1
        if min(h, w) < 1:
            raise DatamilError(f"image size {size} is too small for the conv stack; use at least 32 x 32")
        self.convs = nn.Sequential(*layers)
        self.keypoints = SpatialSoftmax(c_in, keypoints, h, w)
        self.out = nn.Linear(2 * keypoints, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W) float in [-1, 1] -> (B, feature_dim)."""
        return self.out(self.keypoints(self.convs(images)))


def random_shift(images: Tensor, index: Tensor, pad: int, seed: int) -> Tensor:
    """(B, C, H, W) -> same shape, each image shifted by an integer offset in [-pad, pad]^2 that is a
    pure function of (index (B,), seed); edge pixels are replicated into the gap (DrQ)."""
    b, _, h, w = images.shape
    offsets = torch.floor(hash_uniform(index, seed, 2, stream=_SHIFT_STREAM) * (2 * pad + 1))  # (B, 2)
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    # Integer pixel offsets on a pixel-centred grid: bilinear sampling then reads exact pixels.
    base_y = (torch.arange(h, dtype=images.dtype, device=images.device) + 0.5) / (h + 2 * pad) * 2 - 1
    base_x = (torch.arange(w, dtype=images.dtype, device=images.device) + 0.5) / (w + 2 * pad) * 2 - 1
    step_x, step_y = 2.0 / (w + 2 * pad), 2.0 / (h + 2 * pad)
    grid_y = base_y[None, :, None] + (offsets[:, 1, None, None]).to(images.dtype) * step_y  # (B, H, 1)
    grid_x = base_x[None, None, :] + (offsets[:, 0, None, None]).to(images.dtype) * step_x  # (B, 1, W)
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)  # (B, H, W, 2) as (x, y)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) float -> (B, C, *size): "area" when shrinking, bilinear when growing."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    mode = "area" if images.shape[2] >= size[0] else "bilinear"
    return F.interpolate(images, size=size, mode=mode, **({} if mode == "area" else {"align_corners": False}))


def resize_frames(frames: np.ndarray, size: tuple[int, int], chunk: int = 256) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, *size, 3), resized like the encoder does, in chunks (bounded memory)."""
    out = np.empty((len(frames), *size, frames.shape[-1]), np.uint8)
    for lo in range(0, len(frames), chunk):
        x = torch.from_numpy(np.array(frames[lo : lo + chunk])).permute(0, 3, 1, 2).float()  # a copy
        y = resize_images(x, size).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        out[lo : lo + len(x)] = y.numpy()
    return out


def conform_store(
    store: TrajectoryStore, obs_names: Collection[str], image_sizes: Mapping[str, tuple[int, int]]
) -> TrajectoryStore:
    """`store` with only the observation arrays in `obs_names` (e.g. "obs/image_primary") and each camera
    named in `image_sizes` resized to its (H, W) as the encoder would (rounded to uint8).

    Datasets differ in what else they carry (an OXE prior's state, an image-only target) and in camera
    size; this puts one in the layout of another (co-training) or of a policy (the encoder fit).
    """
    arrays = {k: v for k, v in store.arrays.items() if not k.startswith(OBS_PREFIX) or k in obs_names}
    for name, size in image_sizes.items():
        if name in arrays and tuple(arrays[name].shape[1:3]) != tuple(size):
            arrays[name] = resize_frames(arrays[name], tuple(size))
    return TrajectoryStore(arrays, store.offsets, store.episodes, store.stats)


def check_image_shape(key: str, shape: Sequence[int]) -> tuple[int, int, int]:
    """(H, W, 3) of one per-step image shape, or a one-line DataError (grayscale, not an image)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
        raise DataError(
            f"image {key!r} is grayscale {shape}; the encoder expects RGB (H, W, 3): set "
            "data.grayscale_to_rgb=true (data=rlds) or repeat the channel when converting the dataset"
        )
    if len(shape) != 3 or shape[-1] != 3:
        raise DataError(f"image {key!r} has per-step shape {shape}; expected RGB (H, W, 3) uint8")
    return shape  # type: ignore[return-value]


class ObsEncoder(nn.Module):
    """Observations {obs/<key>: ...} -> (B, out_dim) features: conv features per camera ++ state.

    image_size: every camera is resized to it ("area" when shrinking, bilinear when growing); None
    keeps the size the policy was built for and rejects other sizes with a one-line error.
    """

    def __init__(
        self,
        image_shapes: Mapping[str, Sequence[int]],
        state_dim: int,
        state_stats: NormStats | None,
        image_size: Sequence[int] | None,
        shift_pad: int,
        aug_seed: int,
        **conv_kwargs: Any,
    ) -> None:
        super().__init__()
        self.shapes = {k: check_image_shape(k, s) for k, s in sorted(image_shapes.items())}
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.shift_pad, self.aug_seed, self.state_dim = int(shift_pad), int(aug_seed), int(state_dim)
        self.convs = nn.ModuleDict(
            {k.replace("/", "_"): ConvEncoder(self.input_size(k), **conv_kwargs) for k in self.shapes}
        )
        self.state_norm = Normalizer(state_stats, state_dim) if state_dim else None
        feature_dim = int(conv_kwargs.get("feature_dim", 64))
        self.out_dim = feature_dim * len(self.shapes) + self.state_dim

    def input_size(self, key: str) -> tuple[int, int]:
        """(H, W) the conv net of camera `key` takes: `image_size`, else the size the policy was built on."""
        return self.image_size or self.shapes[key][:2]

    def pixels(self, key: str, raw: Tensor, index: Tensor | None) -> Tensor:
        """uint8 (B, H, W, 3) -> (B, 3, h, w) float in [-1, 1], resized, shifted in train mode."""
        check_image_shape(key, raw.shape[1:])
        size = self.input_size(key)
        if self.image_size is None and tuple(raw.shape[1:3]) != size:
            raise DataError(
                f"image {key!r} is {tuple(raw.shape[1:3])} here but {size} in the data the policy was built "
                "on; set policy.image_size: [H, W] to resize every dataset to one size"
            )
        dtype = self.convs[key.replace("/", "_")].out.weight.dtype
        x = resize_images(raw.permute(0, 3, 1, 2).to(dtype) * (2.0 / 255.0) - 1.0, size)
        if self.training and self.shift_pad > 0 and index is not None:
            x = random_shift(x, index, self.shift_pad, self.aug_seed)
        return x

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """(B, out_dim) features of a batch of observations (store keys, "obs/<key>")."""
        parts = []
        for key in self.shapes:
            name = OBS_PREFIX + key
            if name not in obs:
                present = sorted(k[len(OBS_PREFIX) :] for k in obs if k.startswith(OBS_PREFIX))
                raise DataError(
                    f"observation {key!r} is missing; the policy reads {list(self.shapes)}, got {present}"
                )
            parts.append(self.convs[key.replace("/", "_")](self.pixels(key, obs[name], obs.get(INDEX))))
        if self.state_norm is not None:
            parts.append(self.state_norm(obs[OBS_STATE_KEY].float()))
        return torch.cat(parts, dim=-1)


# datamil/configs/policy/bc_image.yaml is the only source of these defaults (diffusion_image.yaml's equal them)
DEFAULTS = configured("policy", "bc_image")


class VisionPolicy(Policy):
    """Any head policy (registry name `head`) on ObsEncoder features; see the module docstring.

    obs_dim: state dimension (0 = state-free data). image_keys: cameras to read (empty = state only);
    image_shapes: per-step (H, W, 3) of each camera in the data (supplied by `datamil.policies.build_policy`).
    cameras: observation key -> simulator camera, used only to render the same views at evaluation.
    Extra keyword arguments (hidden, activation, horizon, ...) go to the head.
    """

    default_head = "bc_gaussian"
    reads_images = True  # the images capability (datamil.policies.base.Policy): image_shapes from the data

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        head: str | None = None,
        image_keys: Sequence[str] = (),
        image_shapes: Mapping[str, Sequence[int]] | None = None,
        image_size: Sequence[int] | None = DEFAULTS["image_size"],
        use_state: bool = DEFAULTS["use_state"],
        channels: Sequence[int] = DEFAULTS["channels"],
        strides: Sequence[int] = DEFAULTS["strides"],
        keypoints: int = DEFAULTS["keypoints"],
        feature_dim: int = DEFAULTS["feature_dim"],
        shift_pad: int = DEFAULTS["shift_pad"],
        aug_seed: int = DEFAULTS["aug_seed"],
        cameras: Mapping[str, str] | None = None,
        state_stats: NormStats | None = None,
        render: Mapping[str, Any] | None = None,
        **head_kwargs: Any,
    ) -> None:
        super().__init__()
        shapes = _image_shapes(image_keys, image_shapes, image_size)
        state_dim = int(obs_dim) if use_state else 0
        conv = dict(
            channels=tuple(channels), strides=tuple(strides), keypoints=keypoints, feature_dim=feature_dim
        )
        self.encoder = ObsEncoder(shapes, state_dim, state_stats, image_size, shift_pad, aug_seed, **conv)
        if self.encoder.out_dim == 0:
            raise DatamilError("the policy reads no observation; set image_keys or use_state: true")
        self.head: Policy = POLICIES.get(head or self.default_head)(
            self.encoder.out_dim, action_dim, **head_kwargs
        )
        self.cameras = dict(cameras or {})
        self.render = {"fast": True, "samples": 0, **dict(render or {})}
        self.image_keys = tuple(shapes)
        keys = [OBS_PREFIX + k for k in self.image_keys] + ([OBS_STATE_KEY] if state_dim else [])
        self.batch_keys = (*keys, ACTION)

    def camera_config(self) -> dict[str, Any] | None:
        """What evaluation must render: {"cameras": {key: camera}, "size": (H, W) of the training data,
        "fast" / "samples": the scene flags and multisampling the data was rendered with}.

        None when the policy reads no image. A camera missing for a key it reads fails on one line.
        """
        if not self.image_keys:
            return None
        missing = [k for k in self.image_keys if k not in self.cameras]
        if missing:
            raise DatamilError(
                f"the policy reads {missing} but knows no simulator camera for them; "
                "set policy.cameras: {image_primary: corner} (the data config's cameras)"
            )
        size = self.encoder.shapes[self.image_keys[0]][:2]
        cameras = {k: self.cameras[k] for k in self.image_keys}
        return {
            "cameras": cameras,
            "size": size,
            "fast": bool(self.render["fast"]),
            "samples": int(self.render["samples"]),
        }

    def check_data(self, stores: Mapping[str, Any]) -> None:
        """One-line DataError unless every named store has what the policy reads, at a usable size.

        stores: name -> TrajectoryStore (e.g. prior, target_train, target_val). Run before any training,
        so a camera missing from one dataset or a size mismatch without `image_size` fails up front.
        """
        for name, store in stores.items():
            if store is None:
                continue
            for key in self.image_keys:
                array = store.arrays.get(OBS_PREFIX + key)
                if array is None:
                    raise DataError(
                        f"the {name} data has no image {key!r} (it has {store.obs_keys}); map one of its "
                        "cameras to it (data=rlds: data.prior_image_keys / data.target_image_keys)"
                    )
                shape = check_image_shape(key, array.shape[1:])
                built = self.encoder.shapes[key]
                if self.encoder.image_size is None and shape[:2] != built[:2]:
                    raise DataError(
                        f"image {key!r} is {shape[:2]} in the {name} data but {built[:2]} in the data the "
                        "policy was built on; set policy.image_size: [H, W] to resize every dataset"
                    )
            state = store.arrays.get(OBS_STATE_KEY)
            if self.encoder.state_dim and (state is None or state.shape[1:] != (self.encoder.state_dim,)):
                has = "none" if state is None else f"{state.shape[1:]}"
                raise DataError(
                    f"the {name} data has no {self.encoder.state_dim}-d state vector (it has {has}); use "
                    "policy=bc_image_only (policy.use_state=false) when the datasets' states differ"
                )

    @property
    def obs_norm(self) -> Normalizer | None:
        """The state normalizer (inside the encoder), where every policy keeps it."""
        return self.encoder.state_norm

    @property
    def horizon(self) -> int | None:
        """The head's action-chunk length (diffusion), None for single-step heads."""
        return self.head.horizon

    @property
    def n_action_steps(self) -> int:
        return int(self.head.n_action_steps)

    def reset_sampler(self, seed: int) -> None:
        self.head.reset_sampler(seed)

    def extra_batch_arrays(self, store: Any, step_ids: np.ndarray) -> dict[str, np.ndarray]:
        return self.head.extra_batch_arrays(store, step_ids)

    def head_batch(self, batch: Batch) -> Batch:
        """The batch the head sees: observations replaced by encoder features under obs/state."""
        rest = {k: v for k, v in batch.items() if not k.startswith(OBS_PREFIX)}
        return {**rest, OBS_STATE_KEY: self.encoder(batch)}

    def loss_fn(self, batch: Batch) -> Tensor:
        """(B,) the head's per-sample loss on encoder features (eq. loss)."""
        return self.head.loss_fn(self.head_batch(batch))

    def predict(self, obs: dict[str, Tensor]) -> Tensor:
        return self.head.predict(self.head_batch(obs))

    @torch.no_grad()
    def act(self, params: dict[str, Tensor] | None, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Actions for raw observations {"state": (B, D), "image_primary": (B, H, W, 3) uint8}, no shift."""
        was_training = self.training
        self.eval()
        try:
            return super().act(params, obs)
        finally:
            self.train(was_training)


class DiffusionImagePolicy(VisionPolicy):
    """The diffusion head (action chunks, DDIM) on image features: `policy=diffusion_image`."""

    default_head = "diffusion"


def _image_shapes(
    keys: Sequence[str], shapes: Mapping[str, Sequence[int]] | None, size: Sequence[int] | None
) -> dict[str, tuple[int, ...]]:
    """Per-key (H, W, 3): from the data when given, else the resize target; unknown keys fail on one line."""
    out = {}
    for key in keys:
        if shapes is not None and key not in shapes:
            raise DataError(
                f"the policy reads image {key!r} but the data has only {sorted(shapes) or 'no images'}; "
                "set policy.image_keys to cameras the data has"
            )
        if shapes is None and size is None:
            raise DatamilError(f"image {key!r}: pass image_shapes (from the data) or an image_size")
        out[key] = tuple(shapes[key]) if shapes is not None else (int(size[0]), int(size[1]), 3)
    return out
