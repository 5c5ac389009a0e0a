"""Push-T: the environment's determinism and exact coverage, the expert's success and modes, and
the demonstrations data set's windows, ranges and normaliser."""

import json
import math

import numpy as np
import pytest
import torch

from diffuse.data import load_dataset
from diffuse.data import pusht as pusht_data
from diffuse.envs import experts
from diffuse.envs.pusht import (GOAL_POSE, T_AREA, T_OUTLINE, PushT, clip_convex, coverage, distance_to_t,
                                initial_state, placed, polygon_area)

# Demonstration seeds 0..4: the expert draws counter-clockwise for 0..3 and clockwise for 4.
EPISODES = 5


def random_actions(seed: int, n: int) -> np.ndarray:
    return np.random.RandomState(seed).uniform(0, 512, (n, 2))


def rollout(env: PushT, seed: int, actions) -> tuple[np.ndarray, np.ndarray]:
    observations, scores = [env.reset(seed)], []
    for action in actions:
        step = env.step(action)
        observations.append(step.observation)
        scores.append(step.reward)
    return np.array(observations), np.array(scores)


def pushing_actions(seed: int, n: int = 25) -> np.ndarray:
    """Targets that drive the agent through the block, so the block moves."""
    start = initial_state(seed)
    return np.linspace(start[:2], start[2:4] + 2 * (start[2:4] - start[:2]), n)


# -- the environment ------------------------------------------------------------------------
def test_same_seed_and_actions_give_a_bit_identical_trajectory():
    actions = np.concatenate([pushing_actions(3), random_actions(1, 20)])
    first = rollout(PushT(), 3, actions)
    again = rollout(PushT(), 3, actions)
    reused = PushT()
    rollout(reused, 8, random_actions(2, 10))  # an earlier episode must not leak into the next
    third = rollout(reused, 3, actions)
    for other in (again, third):
        assert np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1])
    # The pushes moved the block, so the comparison covered contact dynamics, not just the agent.
    assert np.abs(first[0][-1, 2:4] - first[0][0, 2:4]).max() > 5
    assert not np.array_equal(first[0][0], PushT().reset(4))


def test_coverage_is_one_at_the_target_and_zero_far_away():
    assert coverage(GOAL_POSE) == pytest.approx(1.0, abs=1e-12)
    assert coverage((GOAL_POSE[0], GOAL_POSE[1], GOAL_POSE[2] + 2 * math.pi)) == pytest.approx(1.0, abs=1e-12)
    assert coverage((60.0, 450.0, 0.3)) == 0.0
    # Turned half a turn about its centroid, the T overlaps itself where the bar crosses the
    # other's stem (two 30 x 30 squares) and the stems overlap by 2 * 75/7 (bar top at 285/7).
    expected = (900 + 900 + 30 * 150 / 7) / T_AREA
    assert coverage((*GOAL_POSE[:2], GOAL_POSE[2] + math.pi)) == pytest.approx(expected, rel=1e-12)
    # Shifted sideways by 10 along its own bar, the overlap loses a 10-wide strip of each piece's height.
    shift = 10 * np.array([math.cos(GOAL_POSE[2]), math.sin(GOAL_POSE[2])])
    lost = 10 * 30 + 10 * 90
    assert coverage((GOAL_POSE[0] + shift[0], GOAL_POSE[1] + shift[1], GOAL_POSE[2])) == \
        pytest.approx((T_AREA - lost) / T_AREA, rel=1e-12)


def test_clipping_convex_polygons_matches_hand_computed_cases():
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    shifted = square + 1.0
    overlap = clip_convex(square, shifted)
    assert abs(polygon_area(overlap)) == pytest.approx(1.0)
    assert np.allclose(np.sort(overlap, axis=0), np.sort(np.array([[1, 1], [2, 1], [2, 2], [1, 2]]), axis=0))
    # Orientation of either polygon does not matter.
    assert abs(polygon_area(clip_convex(square[::-1], shifted[::-1]))) == pytest.approx(1.0)
    # A triangle with corners (0, 0), (4, 0), (0, 4) cut by the unit-offset square [1, 3]^2: the
    # part of the square below the line x + y = 4 is the square minus a right triangle of legs 2.
    triangle = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    assert abs(polygon_area(clip_convex(shifted, triangle))) == pytest.approx(4.0 - 2.0)
    assert len(clip_convex(square, square + 5.0)) == 0
    assert abs(polygon_area(T_OUTLINE)) == pytest.approx(T_AREA)  # the outline encloses the two pieces


def test_distance_to_the_block_is_exact_outside_and_zero_inside():
    pose = (200.0, 300.0, 0.7)
    assert distance_to_t(np.array(pose[:2]), pose) == 0.0
    # 20 pixels beyond the bar's top edge, along the edge's outward normal.
    top_middle = placed(np.array([[0.0, T_OUTLINE[0, 1] - 20.0]]), pose)[0]
    assert distance_to_t(top_middle, pose) == pytest.approx(20.0)


def test_bad_input_gets_a_clear_error():
    env = PushT()
    with pytest.raises(RuntimeError, match="reset"):
        env.step([1.0, 2.0])
    env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env.step(np.zeros((8, 2)))
    with pytest.raises(ValueError, match="finite"):
        env.step([float("nan"), 1.0])
    with pytest.raises(ValueError, match="seed or a state"):
        env.reset()
    with pytest.raises(ValueError, match="non-negative integer"):
        env.reset(-1)


def test_render_draws_the_scene():
    env = PushT()
    env.reset(0)
    image = env.render(64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3).tolist()}
    assert (235, 130, 40) in colours and (110, 125, 170) in colours  # the agent and the block


def test_approach_mode_reads_the_direction_round_the_block():
    block = (256.0, 256.0, 0.0)
    # A quarter turn at radius 150 with increasing angle (clockwise on screen, y down), then
    # straight in until the agent touches the stem's side.
    angles = np.linspace(0.0, math.pi / 2, 10)
    path = [[256 + 150 * math.cos(a), 256 + 150 * math.sin(a)] for a in angles]
    path += [[256, 256 + 150 - k * 10] for k in range(1, 15)]
    observations = np.array([[*p, *block] for p in path])
    assert experts.approach_mode(observations) == 0
    mirrored = observations * [1, -1, 1, 1, 1] + [0, 512, 0, 0, 0]
    assert experts.approach_mode(mirrored) == 1
    assert experts.approach_mode(observations[:5]) is None  # never touched the block


# -- the expert and its demonstrations ----------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("pusht"))


@pytest.fixture(scope="module")
def recorded(cache):
    return pusht_data.recorded_episodes(EPISODES, cache)


def test_the_expert_solves_seeded_episodes_both_ways(recorded):
    # Measured: 50 of 50 evaluation episodes reach coverage 0.95 (benchmarks/pusht_expert.py);
    # here every one of the five demonstrations must, within the 300-step limit.
    assert (recorded.max_coverage >= 0.95).all(), recorded.max_coverage
    assert (recorded.lengths < 300).all()
    assert set(recorded.modes.tolist()) == {0, 1}
    for k in range(EPISODES):
        observations, _ = recorded.episode(k)
        assert experts.approach_mode(observations) == recorded.modes[k]
        assert coverage(tuple(observations[-1, 2:5])) >= 0.95


def test_the_expert_is_deterministic(recorded):
    episode = experts.expert_episode(4)
    observations, actions = recorded.episode(4)
    assert np.array_equal(episode.observations, observations) and np.array_equal(episode.actions, actions)
    with pytest.raises(ValueError, match="mode"):
        experts.PushTExpert(2)


def test_demonstrations_windows_shapes_and_ranges(recorded, cache):
    train = load_dataset("pusht", "train", episodes=EPISODES, cache_dir=cache)
    test = load_dataset("pusht", "test", episodes=EPISODES, cache_dir=cache)
    h = train.horizons
    assert (h.obs, h.prediction, h.action) == (2, 16, 8)
    assert train.modality == "sequence" and train.shape == (16, 2)
    assert set(train.fields) == {"x", "obs", "mode", "episode"}
    example = train[0]
    assert example["x"].shape == (16, 2) and example["obs"].shape == (2, 5)
    assert example["x"].dtype == torch.float32 and example["mode"].dtype == torch.int64
    # Episodes 0..3 train, episode 4 (the last tenth, at least one) test; one window per step
    # plus the padding at either end.
    windows = [int(recorded.lengths[k]) - h.prediction + h.action + h.obs - 1 for k in range(EPISODES)]
    assert len(train) == sum(windows[:4]) and len(test) == windows[4]
    assert set(test.columns["episode"].tolist()) == {4}
    for part in (train, test):
        for values in (part.data, part.columns["obs"]):
            assert values.min() >= -1 and values.max() <= 1
    assert train.data.min() == -1 or test.data.min() == -1  # the range is the demonstrations' own

    # Un-normalised, window k of episode 0 is its recorded actions from step k - (To - 1),
    # clamped at the episode's start.
    _, actions = recorded.episode(0)
    k = 5
    window = train.normaliser.action.unnormalise(train[k]["x"].double()).numpy()
    assert np.allclose(window, actions[k - 1: k - 1 + 16], atol=1e-3)
    first = train.normaliser.action.unnormalise(train[0]["x"].double()).numpy()
    assert np.allclose(first[0], actions[0], atol=1e-3) and np.allclose(first[1:], actions[:15], atol=1e-3)


def test_normaliser_round_trips(recorded, cache):
    data = load_dataset("pusht", episodes=EPISODES, cache_dir=cache)
    normaliser = pusht_data.Normaliser.from_dict(json.loads(json.dumps(data.normaliser.to_dict())))
    assert normaliser == data.normaliser
    values = recorded.observations[:50]
    assert np.allclose(normaliser.obs.unnormalise(normaliser.obs.normalise(values)), values, rtol=0, atol=1e-9)
    tensor = torch.from_numpy(recorded.actions[:50])
    back = normaliser.action.unnormalise(normaliser.action.normalise(tensor))
    assert back.dtype == torch.float64 and torch.allclose(back, tensor, rtol=0, atol=1e-9)
    low = np.array(normaliser.action.low)
    assert np.allclose(normaliser.action.normalise(low), -1)
    constant = pusht_data.MinMax.fit(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert np.array_equal(constant.normalise(np.array([2.0, 5.0])), [0.0, 0.0])
    with pytest.raises(ValueError, match="dimensions"):
        normaliser.action.normalise(np.zeros(5))


def test_demonstrations_come_from_the_cache(cache, monkeypatch):
    def no_expert(seed, max_steps=None):
        raise AssertionError("the cached demonstrations were recorded again")

    monkeypatch.setattr(experts, "expert_episode", no_expert)
    assert len(load_dataset("pusht", episodes=EPISODES, cache_dir=cache)) > 0
    with pytest.raises(ValueError, match="at least 2"):
        load_dataset("pusht", episodes=1, cache_dir=cache)
    with pytest.raises(ValueError, match="must fit"):
        load_dataset("pusht", episodes=EPISODES, cache_dir=cache, obs_horizon=10)
