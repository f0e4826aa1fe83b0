"""Tiny real RLDS datasets for the tests: ours (Episode lists for write_rlds) and raw OXE-layout ones.

The OXE writers reproduce each dataset's published TFDS feature structure (nested keys, dtypes, tensor
shapes) with tiny camera images, and return the raw values so tests can check the standardization.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.rlds_raw import flag_values, step_flags, tfds_module, write_raw  # noqa: F401 (re-exported)
from datamil.data.schema import Episode, EpisodeMeta

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

HW = (16, 16)  # tiny camera images; every other shape is the published one


def make_episodes(
    n: int = 3,
    steps: int = 6,
    state_dim: int = 5,
    action_dim: int = 4,
    image: bool = True,
    seed: int = 0,
    dataset: str = "toy",
) -> list[Episode]:
    """n episodes of lengths steps, steps+1, ... with state, an optional camera, language and metadata."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n):
        t = steps + i
        obs = {"state": rng.normal(size=(t, state_dim)).astype(np.float32)}
        if image:
            obs["image_primary"] = rng.integers(0, 256, (t, *HW, 3), dtype=np.uint8)
        meta = EpisodeMeta(f"{dataset}/ep{i}", dataset, f"task{i % 2}", (True, False, None)[i % 3])
        actions = rng.uniform(-1, 1, (t, action_dim)).astype(np.float32)
        rewards = rng.normal(size=t).astype(np.float32)
        terminal = np.arange(t) == t - 1
        episodes.append(
            Episode(obs, actions, meta, rewards, is_terminal=terminal, language_instruction=f"do {i}")
        )
    return episodes


# ---------------------------------------------------------------- feature helpers
def _f() -> Any:
    return tfds_module().features


def _t(*shape: int, dtype: Any = np.float32) -> Any:
    return _f().Tensor(shape=shape, dtype=dtype)


def _img(channels: int = 3, dtype: Any = np.uint8) -> Any:
    return _f().Image(shape=(*HW, channels), dtype=dtype)


def _flags() -> dict:
    return step_flags()


_flag_values = flag_values


def _images(rng: np.random.Generator, t: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (t, *HW, channels), dtype=np.uint8)


# ---------------------------------------------------------------- fractal20220817_data (RT-1)
FRACTAL_GRIPPER = np.array([0.0, 0.0, 1.0, 0.0, -1.0, 0.0])  # relative: close at 2, open at 4
FRACTAL_GRIPPER_ABS = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])


def fractal_features() -> Any:
    f = _f()
    action = {
        "base_displacement_vector": _t(2),
        "base_displacement_vertical_rotation": _t(1),
        "gripper_closedness_action": _t(1),
        "rotation_delta": _t(3),
        "terminate_episode": _t(3, dtype=np.int32),
        "world_vector": _t(3),
    }
    observation = {
        "base_pose_tool_reached": _t(7),
        "gripper_closed": _t(1),
        "gripper_closedness_commanded": _t(1),
        "height_to_bottom": _t(1),
        "image": _img(),
        "natural_language_embedding": _t(512),
        "natural_language_instruction": f.Text(),
        "orientation_box": _t(2, 3),
        "orientation_start": _t(4),
        "robot_orientation_positions_box": _t(3, 3),
        "rotation_delta_to_go": _t(3),
        "src_rotation": _t(4),
        "vector_to_go": _t(3),
        "workspace_bounds": _t(3, 3),
    }
    aspects = {
        k: f.Scalar(np.bool_)
        for k in ("already_success", "feasible", "has_aspects", "success", "undesirable")
    }
    attributes = {}
    for key in ("collection_mode", "data_type", "env", "location", "objects_family", "task_family"):
        attributes[key] = f.Scalar(np.int64)
        attributes[key + "_name"] = f.Text()
    steps = {"action": f.FeaturesDict(action), "observation": f.FeaturesDict(observation), **_flags()}
    return f.FeaturesDict(
        {
            "aspects": f.FeaturesDict(aspects),
            "attributes": f.FeaturesDict(attributes),
            "steps": f.Dataset(steps),
        }
    )


def fractal_example(rng: np.random.Generator, index: int, t: int = 6) -> dict:
    zeros = {
        "base_displacement_vector": (2,),
        "base_displacement_vertical_rotation": (1,),
        "terminate_episode": (3,),
    }
    action = {
        k: np.zeros((t, *s), np.int32 if k == "terminate_episode" else np.float32) for k, s in zeros.items()
    }
    action.update(
        world_vector=rng.normal(size=(t, 3)).astype(np.float32),
        rotation_delta=rng.normal(size=(t, 3)).astype(np.float32),
        gripper_closedness_action=FRACTAL_GRIPPER[:t, None].astype(np.float32),
    )
    shapes = {
        "gripper_closedness_commanded": (1,),
        "height_to_bottom": (1,),
        "natural_language_embedding": (512,),
        "orientation_box": (2, 3),
        "orientation_start": (4,),
        "robot_orientation_positions_box": (3, 3),
        "rotation_delta_to_go": (3,),
        "src_rotation": (4,),
        "vector_to_go": (3,),
        "workspace_bounds": (3, 3),
    }
    observation = {k: np.zeros((t, *s), np.float32) for k, s in shapes.items()}
    observation.update(
        base_pose_tool_reached=rng.normal(size=(t, 7)).astype(np.float32),
        gripper_closed=rng.uniform(size=(t, 1)).astype(np.float32),
        image=_images(rng, t),
        natural_language_instruction=[f"pick object {index}"] * t,
    )
    aspects = {
        "already_success": False,
        "feasible": True,
        "has_aspects": index != 2,
        "success": index == 0,
        "undesirable": False,
    }
    attributes = {}
    for key in ("collection_mode", "data_type", "env", "location", "objects_family", "task_family"):
        attributes[key], attributes[key + "_name"] = 0, key
    steps = {"action": action, "observation": observation, **_flag_values(t)}
    return {"aspects": aspects, "attributes": attributes, "steps": steps}


# ---------------------------------------------------------------- bridge (BridgeData V2, WidowX)
BRIDGE_GRIPPER = np.array([1.0, 0.99, 0.5, 0.02, 0.0, 0.6])  # continuous position, 1 = open
BRIDGE_GRIPPER_ABS = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 0.6])  # in-between -> next definite; tail kept


def bridge_features() -> Any:
    f = _f()
    metadata = {
        "episode_id": f.Scalar(np.int32),
        "file_path": f.Text(),
        **{f"has_image_{i}": f.Scalar(np.bool_) for i in range(4)},
        "has_language": f.Scalar(np.bool_),
    }
    observation = {**{f"image_{i}": _img() for i in range(4)}, "state": _t(7)}
    steps = {
        "action": _t(7),
        "discount": f.Scalar(np.float32),
        "language_embedding": _t(512),
        "language_instruction": f.Text(),
        "observation": f.FeaturesDict(observation),
        **_flags(),
    }
    return f.FeaturesDict({"episode_metadata": f.FeaturesDict(metadata), "steps": f.Dataset(steps)})


def bridge_example(rng: np.random.Generator, index: int, t: int = 6) -> dict:
    action = rng.normal(size=(t, 7)).astype(np.float32)
    action[:, 6] = BRIDGE_GRIPPER[:t]
    metadata = {
        "episode_id": 100 + index,
        "file_path": f"/raw/{index}",
        "has_language": True,
        **{f"has_image_{i}": i == 0 for i in range(4)},
    }
    observation = {
        **{f"image_{i}": _images(rng, t) for i in range(4)},
        "state": rng.normal(size=(t, 7)).astype(np.float32),
    }
    steps = {
        "action": action,
        "discount": np.ones(t, np.float32),
        "language_embedding": np.zeros((t, 512), np.float32),
        "language_instruction": [f"put the spoon in pot {index}"] * t,
        "observation": observation,
        **_flag_values(t),
    }
    return {"episode_metadata": metadata, "steps": steps}


# ---------------------------------------------------------------- taco_play (Franka, CALVIN format)
TACO_GRIPPER = np.array([1.0, 1.0, -1.0, -1.0, 1.0, 1.0])  # close = -1, open = +1
TACO_GRIPPER_ABS = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])


def taco_features() -> Any:
    f = _f()
    action = {
        "actions": _t(7),
        "rel_actions_gripper": _t(7),
        "rel_actions_world": _t(7),
        "terminate_episode": f.Scalar(np.float32),
    }
    observation = {
        "depth_gripper": _t(84, 84),
        "depth_static": _t(150, 200),
        "natural_language_embedding": _t(512),
        "natural_language_instruction": f.Text(),
        "rgb_gripper": _img(),
        "rgb_static": _img(),
        "robot_obs": _t(15),
        "structured_language_instruction": f.Text(),
    }
    steps = {"action": f.FeaturesDict(action), "observation": f.FeaturesDict(observation), **_flags()}
    return f.FeaturesDict({"steps": f.Dataset(steps)})


def taco_example(rng: np.random.Generator, index: int, t: int = 6) -> dict:
    rel = rng.normal(size=(t, 7)).astype(np.float32)
    rel[:, 6] = TACO_GRIPPER[:t]
    action = {
        "actions": rng.normal(size=(t, 7)).astype(np.float32),
        "rel_actions_gripper": rel.copy(),
        "rel_actions_world": rel,
        "terminate_episode": np.zeros(t, np.float32),
    }
    observation = {
        "depth_gripper": np.zeros((t, 84, 84), np.float32),
        "depth_static": np.zeros((t, 150, 200), np.float32),
        "natural_language_embedding": np.zeros((t, 512), np.float32),
        "natural_language_instruction": [f"open the drawer {index}"] * t,
        "rgb_gripper": _images(rng, t),
        "rgb_static": _images(rng, t),
        "robot_obs": rng.normal(size=(t, 15)).astype(np.float32),
        "structured_language_instruction": ["open_drawer"] * t,
    }
    return {"steps": {"action": action, "observation": observation, **_flag_values(t)}}


# ---------------------------------------------------------------- berkeley_autolab_ur5
UR5_GRIPPER = np.array([0.0, -1.0, 0.0, 1.0, 0.0, 0.0])  # relative: open at 1 (so closed before), close at 3
UR5_GRIPPER_ABS = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])


def ur5_features() -> Any:
    f = _f()
    action = {
        "gripper_closedness_action": f.Scalar(np.float32),
        "rotation_delta": _t(3),
        "terminate_episode": f.Scalar(np.float32),
        "world_vector": _t(3),
    }
    observation = {
        "hand_image": _img(),
        "image": _img(),
        "image_with_depth": _img(1, np.float32),
        "natural_language_embedding": _t(512),
        "natural_language_instruction": f.Text(),
        "robot_state": _t(15),
    }
    steps = {"action": f.FeaturesDict(action), "observation": f.FeaturesDict(observation), **_flags()}
    return f.FeaturesDict({"steps": f.Dataset(steps)})


def ur5_example(rng: np.random.Generator, index: int, t: int = 6) -> dict:
    action = {
        "gripper_closedness_action": UR5_GRIPPER[:t].astype(np.float32),
        "rotation_delta": rng.normal(size=(t, 3)).astype(np.float32),
        "terminate_episode": np.zeros(t, np.float32),
        "world_vector": rng.normal(size=(t, 3)).astype(np.float32),
    }
    observation = {
        "hand_image": _images(rng, t),
        "image": _images(rng, t),
        "image_with_depth": rng.uniform(size=(t, *HW, 1)).astype(np.float32),
        "natural_language_embedding": np.zeros((t, 512), np.float32),
        "natural_language_instruction": [f"sweep the cloth {index}"] * t,
        "robot_state": rng.normal(size=(t, 15)).astype(np.float32),
    }
    return {"steps": {"action": action, "observation": observation, **_flag_values(t)}}


OXE_WRITERS = {
    "fractal20220817_data": (fractal_features, fractal_example),
    "bridge": (bridge_features, bridge_example),
    "taco_play": (taco_features, taco_example),
    "berkeley_autolab_ur5": (ur5_features, ur5_example),
}


def write_oxe(
    data_dir: Path, name: str, n: int = 3, seed: int = 0, **overrides: Any
) -> tuple[Path, list[dict]]:
    """Write n episodes of an OXE dataset layout; returns (version dir, the raw examples written)."""
    features, example = OXE_WRITERS[name]
    rng = np.random.default_rng(seed)
    examples = [example(rng, i) for i in range(n)]
    return write_raw(data_dir, overrides.get("as_name", name), features(), examples), examples


# ---------------------------------------------------------------- any registry row, from its recorded spec
ROW_HW = (8, 8)  # cameras of the per-row datasets; every other shape is the one the row records


def row_text(name: str, index: int) -> str:
    return f"{name} task {index}"


def spec_features(spec: dict) -> dict:
    """A nested spec of oxe_registry.Feature leaves -> the TFDS features it describes (cameras ROW_HW)."""
    f = _f()
    out = {}
    for key, leaf in spec.items():
        if isinstance(leaf, dict):
            out[key] = f.FeaturesDict(spec_features(leaf))
        elif leaf.kind == "text":
            out[key] = f.Text()
        elif leaf.kind == "image":
            out[key] = f.Image(shape=(*ROW_HW, leaf.shape[-1]), dtype=np.dtype(leaf.dtype))
        else:
            out[key] = f.Tensor(shape=leaf.shape, dtype=np.dtype(leaf.dtype))
    return out


def spec_values(rng: np.random.Generator, spec: dict, lead: tuple[int, ...], text: str) -> dict:
    """Random values for every leaf of `spec`, each of shape (*lead, ...); text leaves hold `text`."""
    out = {}
    for key, leaf in spec.items():
        if isinstance(leaf, dict):
            out[key] = spec_values(rng, leaf, lead, text)
        elif leaf.kind == "text":
            out[key] = np.full(lead, text, dtype=object) if lead else text
        else:
            shape = (*lead, *ROW_HW, leaf.shape[-1]) if leaf.kind == "image" else (*lead, *leaf.shape)
            out[key] = _random(rng, leaf.dtype, shape)
    return out


def _random(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> Any:
    if dtype == "bool":
        value = rng.random(shape) < 0.5
    elif dtype.startswith(("uint", "int")):
        high = 256 if dtype == "uint8" else 1000
        value = rng.integers(0, high, shape).astype(dtype)
    else:
        value = rng.normal(size=shape).astype(dtype)
    return value if shape else value.item()


def row_example(rng: np.random.Generator, row: Any, index: int, t: int = 3) -> dict:
    """One episode of `row`'s layout: random values, the instruction row_text(...) at its language key."""
    text = row_text(row.name, index)
    steps = {**spec_values(rng, row.spec, (t,), text), **_flag_values(t)}
    if row.language_key:
        from datamil.data.oxe import lookup

        codes = np.asarray(lookup(steps, row.language_key))
        if codes.dtype.kind in "iu":  # character codes, zero-padded (language_table)
            codes[:] = 0
            codes[:, : len(text)] = [ord(c) for c in text]
    episode = spec_values(rng, row.episode, (), text)
    for flag in row.camera_present.values():  # every episode has every camera
        *parents, leaf = flag.split("/")
        node = episode
        for part in parents:
            node = node[part]
        node[leaf] = True
    return {**episode, "steps": steps}


def row_features(row: Any) -> Any:
    f = _f()
    steps = f.Dataset({**spec_features(row.spec), **_flags()})
    return f.FeaturesDict({**spec_features(row.episode), "steps": steps})


def write_row(data_dir: Path, row: Any, n: int = 2, t: int = 3, seed: int = 0, name: str | None = None):
    """Write n episodes of a registry row's recorded layout; returns (version dir, the raw examples)."""
    rng = np.random.default_rng(seed)
    examples = [row_example(rng, row, i, t) for i in range(n)]
    return write_raw(data_dir, name or row.name, row_features(row), examples), examples
