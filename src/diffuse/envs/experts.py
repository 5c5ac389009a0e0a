"""A scripted Push-T expert with two deliberate modes, and the measure that tells them apart.

The expert plans one push at a time with the simulator itself (it has the privileged, exact
state): for contact points along the T's outline and a few push depths, it tries the push in a
scratch environment and takes the push that brings the block nearest the target pose per control
step spent (travel included). It then travels to the push's start point, pushes, holds, backs off,
and plans again.

The modes: on its first approach the agent circles the block, at a safe radius, clockwise or
counter-clockwise on screen (drawn once per episode from the episode's seed, half and half), to
reach the first contact point. Both ways reach the same point, so both are equally good; a policy
that averages them drives into the block. Later repositioning takes the straight line where it
is clear of the block, else the shorter way round.

`approach_mode(observations)` reads the mode off any trajectory, the expert's or a policy's: the
sign of the angle the agent sweeps around the block's centre before it first touches the block
(the block has not moved before then).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .pusht import (AGENT_RADIUS, GOAL_POSE, T_OUTLINE, T_RADIUS, PushT, agent_touches, distance_to_t, placed,
                    polygon_area)

# In image coordinates (y down) an increasing atan2 angle turns clockwise on screen.
MODES = ("clockwise", "counterclockwise")
MODE_SIGN = {0: 1.0, 1: -1.0}

# Travel: a safe circle around the block's centroid (the T's reach, the agent and a margin that
# the PD controller's corner cutting on the arc eats into), and speeds in pixels per control step.
SAFE_RADIUS = T_RADIUS + AGENT_RADIUS + 16.0
TRAVEL_STEP = 30.0
APPROACH_STEP = 15.0
PUSH_STEP = 12.0
GAP = 5.0              # the push starts this far from the block's surface
CLEARANCE = AGENT_RADIUS + 3.0
CONTACT_SPACING = 15.0
# The first approach sweeps at least this angle around the block in its mode's direction, so the
# two modes are distinct trajectories (a shorter sweep could be outweighed by the straight legs).
MIN_FIRST_SWEEP = math.pi / 4
PUSH_DEPTHS = (2.0, 6.0, 15.0, 35.0, 80.0)
HOLD_STEPS = 2         # let the lagging agent finish the push before backing off
SETTLE_STEPS = 2       # let the agent arrive at the push's start before pushing
# A pose error in pixels: position error plus this many pixels per radian of angle error (about the
# T's mean distance from its centroid, so a radian moves its outline about this far).
PIXELS_PER_RADIAN = 60.0


def pose_error(pose, goal=GOAL_POSE) -> float:
    dx, dy = pose[0] - goal[0], pose[1] - goal[1]
    dtheta = (pose[2] - goal[2] + math.pi) % (2 * math.pi) - math.pi
    return math.hypot(dx, dy) + PIXELS_PER_RADIAN * abs(dtheta)


def contact_candidates() -> list[tuple[np.ndarray, np.ndarray]]:
    """(point, outward normal) pairs along the T's outline, in the T's frame."""
    candidates = []
    area_sign = np.sign(polygon_area(T_OUTLINE))
    for a, b in zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0)):
        edge = b - a
        length = float(np.hypot(*edge))
        # The outward normal is the edge turned away from the interior.
        normal = area_sign * np.array([edge[1], -edge[0]]) / length
        count = max(1, int(length // CONTACT_SPACING))
        for k in range(count):
            candidates.append((a + edge * ((k + 0.5) / count), normal))
    return candidates


CONTACTS = contact_candidates()


def segment_clear(a, b, pose, clearance: float = CLEARANCE) -> bool:
    """Whether the agent's centre can move in a straight line from a to b while staying at least
    `clearance` from the T (checked every 3 pixels)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(2, int(np.hypot(*(b - a)) // 3) + 1)
    points = a + np.linspace(0, 1, n)[:, None] * (b - a)
    return bool(distance_to_t(points, pose).min() >= clearance)


def spaced(points: list[np.ndarray], step: float) -> list[np.ndarray]:
    """Targets every `step` pixels along a polyline, ending exactly at its last point."""
    targets = []
    for a, b in zip(points, points[1:]):
        length = float(np.hypot(*(b - a)))
        n = max(1, math.ceil(length / step))
        targets += [a + (b - a) * (k / n) for k in range(1, n + 1)]
    return targets


def arc(start_angle: float, end_angle: float, direction: float, centre, radius: float) -> list[np.ndarray]:
    """Points every ~TRAVEL_STEP along the circle from one angle to the other, turning in `direction`."""
    sweep = ((end_angle - start_angle) * direction) % (2 * math.pi)
    n = max(1, math.ceil(sweep * radius / TRAVEL_STEP))
    angles = start_angle + direction * sweep * np.arange(1, n + 1) / n
    return [np.asarray(centre) + radius * np.array([math.cos(a), math.sin(a)]) for a in angles]


def ray_exit(point, direction, centre, radius: float) -> np.ndarray:
    """Where the ray point + s * direction (s >= 0) leaves the circle (point inside it)."""
    offset = np.asarray(point) - centre
    b = float(offset @ direction)
    c = float(offset @ offset) - radius ** 2
    return np.asarray(point) + (-b + math.sqrt(max(b * b - c, 0.0))) * direction


def route(agent, start, normal, pose, direction: float | None) -> list[np.ndarray] | None:
    """Travel targets from the agent to a push's start point, or None if the start cannot be
    reached cleanly. `direction` forces the way round the block (+1 or -1, see MODE_SIGN) and a
    sweep of at least MIN_FIRST_SWEEP; None takes a clear straight line, else the shorter way round."""
    centre = np.asarray(pose[:2])
    if direction is None and segment_clear(agent, start, pose):
        return spaced([agent, start], APPROACH_STEP)
    entry = ray_exit(start, normal, centre, SAFE_RADIUS)
    if not segment_clear(entry, start, pose):
        return None
    offset = agent - centre
    distance = float(np.hypot(*offset))
    angle = math.atan2(offset[1], offset[0])
    leave = centre + SAFE_RADIUS * np.array([math.cos(angle), math.sin(angle)])
    if distance < SAFE_RADIUS and not segment_clear(agent, leave, pose):
        return None
    target_angle = math.atan2(*(entry - centre)[::-1])
    if direction is None:
        ahead = (target_angle - angle) % (2 * math.pi)
        direction = 1.0 if ahead <= math.pi else -1.0
    elif ((target_angle - angle) * direction) % (2 * math.pi) < MIN_FIRST_SWEEP:
        return None  # a first approach must visibly circle the block, or its mode is ambiguous
    travel = spaced([agent, leave], TRAVEL_STEP)
    travel += arc(angle, target_angle, direction, centre, SAFE_RADIUS)
    return travel + spaced([entry, start], APPROACH_STEP)


def push_targets(contact, normal, depth: float) -> list[np.ndarray]:
    """From the push's start (GAP clear of the contact) to `depth` past the surface, held there
    while the lagging agent catches up, then back to where the push started."""
    start = contact + normal * (AGENT_RADIUS + GAP)
    end = contact + normal * (AGENT_RADIUS - depth)
    targets = spaced([start, end], PUSH_STEP) + [end] * HOLD_STEPS
    return targets + [contact + normal * (AGENT_RADIUS + GAP)]


@dataclass
class PushTExpert:
    """The expert for one episode: `act(observation)` -> action (the agent's target position).

    `mode` is 0 (clockwise first approach) or 1 (counter-clockwise); `from_seed` draws it. It
    plays out each plan open loop, so it serves one episode: make a new one after a reset."""

    mode: int
    queue: list = field(default_factory=list)
    planned: int = 0

    def __post_init__(self):
        if self.mode not in MODE_SIGN:
            raise ValueError(f"mode must be 0 ({MODES[0]}) or 1 ({MODES[1]}), got {self.mode!r}")
        self.scratch = PushT(max_steps=10 ** 9)

    @classmethod
    def from_seed(cls, seed: int) -> "PushTExpert":
        # A stream apart from the environment's: the mode must not correlate with the start state.
        return cls(int(np.random.RandomState([int(seed), 1]).randint(2)))

    def act(self, observation) -> np.ndarray:
        if not self.queue:
            self.queue = self.plan(np.asarray(observation, dtype=float))
            self.planned += 1
        return self.queue.pop(0)

    def plan(self, observation: np.ndarray) -> list[np.ndarray]:
        agent, pose = observation[:2], tuple(observation[2:5])
        now = pose_error(pose)
        direction = MODE_SIGN[self.mode] if self.planned == 0 else None
        best, best_rate = None, 0.0
        for local_point, local_normal in CONTACTS:
            contact = placed(local_point[None], pose)[0]
            normal = placed(local_normal[None], (0.0, 0.0, pose[2]))[0]
            start = contact + normal * (AGENT_RADIUS + GAP)
            if distance_to_t(start, pose) < AGENT_RADIUS + GAP - 0.5:
                continue  # the circle does not fit there (beside the T's inner corners)
            travel = route(agent, start, normal, pose, direction)
            if travel is None:
                continue
            settle = [start] * SETTLE_STEPS
            for depth in PUSH_DEPTHS:
                if depth > 2 * now + PUSH_DEPTHS[0]:
                    break  # far more than the block has left to go: only slower than a shorter push
                pushing = push_targets(contact, normal, depth)
                after = self.try_push(start, pose, pushing[:-1])  # backing off moves nothing
                steps = len(travel) + len(settle) + len(pushing)
                rate = (now - after) / steps
                if rate > best_rate:
                    best, best_rate = travel + settle + pushing, rate
        if best is None:
            # Nothing helps from here: back away and hold, the episode's clock runs out.
            away = agent + (agent - np.asarray(pose[:2])) / max(1e-9, np.hypot(*(agent - pose[:2]))) * 10
            return [away]
        return best

    def try_push(self, start, pose, targets) -> float:
        self.scratch.place(np.array([*start, *pose]))
        for target in targets:
            self.scratch.advance(target)
        return pose_error(self.scratch.block_pose())


@dataclass
class Episode:
    observations: np.ndarray   # [T + 1, 5]: before each action, and after the last
    actions: np.ndarray        # [T, 2]
    coverage: np.ndarray       # [T]: after each action
    mode: int                  # the expert's mode
    seed: int

    @property
    def max_coverage(self) -> float:
        return float(self.coverage.max()) if len(self.coverage) else 0.0


def expert_episode(seed: int, max_steps: int | None = None) -> Episode:
    """One expert episode of the environment's seed `seed` (deterministic)."""
    env = PushT() if max_steps is None else PushT(max_steps)
    expert = PushTExpert.from_seed(seed)
    observation = env.reset(seed)
    observations, actions, scores = [observation], [], []
    while True:
        action = expert.act(observation)
        step = env.step(action)
        observation = step.observation
        observations.append(observation)
        actions.append(env.target.copy())  # the action as executed (clipped to the arena)
        scores.append(step.reward)
        if step.done:
            break
    return Episode(np.array(observations), np.array(actions), np.array(scores), expert.mode, seed)


def approach_mode(observations) -> int | None:
    """0 (clockwise on screen) or 1 (counter-clockwise): the sign of the angle the agent sweeps
    around the block's centre before it first touches the block; None if it never touches it."""
    observations = np.asarray(observations, dtype=float)
    for t, observation in enumerate(observations):
        if agent_touches(observation):
            break
    else:
        return None
    offsets = observations[: t + 1, :2] - observations[0, 2:4]
    angles = np.arctan2(offsets[:, 1], offsets[:, 0])
    swept = float(np.sum((np.diff(angles) + math.pi) % (2 * math.pi) - math.pi))
    return 0 if swept >= 0 else 1
