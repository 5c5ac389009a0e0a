"""Push-T on pymunk: a circular agent pushes a T-shaped block into a target pose.

The task of Diffusion Policy (Chi et al. 2023), low-dimensional variant, rebuilt here so it needs
no download: a 512 x 512 arena with walls, an agent of radius 15 and a T made of a 120 x 30 bar
and a 30 x 90 stem. An action is the target position (x, y) in pixels of a PD-controlled agent
(a kinematic body: it pushes the block and is never pushed back); the physics runs at 100 Hz,
the control at 10 Hz. The space has no momentum (pymunk damping 0, as in the original), so the
block moves only while it is pushed: quasi-static pushing, which makes a state of agent and block
pose the whole state. Contacts are frictionless, as they are in the original (it sets `friction`
on bodies, which pymunk ignores, so its shapes keep the default 0): the agent can only push along
the contact normal, never drag the block sideways.

Coordinates are image coordinates, y pointing down, so `render` draws the state as it is. The
observation is (agent x, agent y, block x, block y, block angle mod 2 pi), float64, where the
block's position is the T's centroid. The score is coverage: the area of the T's overlap with the
target T over the T's area, computed exactly by clipping the convex pieces against each other
(`clip_convex`). Success is coverage >= SUCCESS_COVERAGE (the original's 0.95).

Determinism: `reset(seed)` draws the start from numpy's legacy RandomState (whose stream never
changes) and builds a fresh pymunk space, so the same seed and the same actions give a bit-identical
trajectory, on this machine and pymunk version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

try:
    import pymunk
except ImportError:  # named at first use, so importing diffuse never needs the extra
    pymunk = None

ARENA = 512.0
AGENT_RADIUS = 15.0
SIM_HZ = 100
CONTROL_HZ = 10
# PD gains of the original: the agent is critically damped towards its target (omega 10/s).
KP, KV = 100.0, 20.0
GOAL_POSE = (256.0, 256.0, math.pi / 4)
SUCCESS_COVERAGE = 0.95
MAX_STEPS = 300
OBS_DIM, ACTION_DIM = 5, 2
OBS_NAMES = ("agent_x", "agent_y", "block_x", "block_y", "block_angle")

# The T in its own frame, origin at the T's centroid: bar 120 x 30 on top, stem 30 x 90 below it
# (in the image, y down). The centroid of the union lies (3600 * 15 + 2700 * 75) / 6300 = 285/7
# below the bar's top edge.
_CENTROID_Y = 285.0 / 7.0
T_PIECES = (
    np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [-60.0, 30.0]]) - [0.0, _CENTROID_Y],
    np.array([[-15.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0]]) - [0.0, _CENTROID_Y],
)
T_AREA = 120.0 * 30.0 + 30.0 * 90.0
# The T's outline (counter-clockwise in the y-up sense, i.e. clockwise on screen), for drawing and
# for the expert's contact points.
T_OUTLINE = np.array([[-60.0, 0.0], [60.0, 0.0], [60.0, 30.0], [15.0, 30.0], [15.0, 120.0], [-15.0, 120.0],
                      [-15.0, 30.0], [-60.0, 30.0]]) - [0.0, _CENTROID_Y]
# Distance from the centroid to the T's farthest corner (the stem's foot).
T_RADIUS = float(np.hypot(T_OUTLINE[:, 0], T_OUTLINE[:, 1]).max())


def need_pymunk():
    if pymunk is None:
        raise ImportError("the Push-T environment needs pymunk: pip install 'diffuse-paths[policy]' (or pymunk)")
    return pymunk


def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def placed(points: np.ndarray, pose) -> np.ndarray:
    """Points of the T's frame placed at pose (x, y, angle)."""
    x, y, angle = pose
    return points @ rotation(angle).T + [x, y]


def to_body_frame(points: np.ndarray, pose) -> np.ndarray:
    """World points [..., 2] in the frame of a T at pose (the inverse of `placed`)."""
    x, y, angle = pose
    return (np.asarray(points, dtype=float) - [x, y]) @ rotation(angle)


def polygon_area(polygon: np.ndarray) -> float:
    """Signed area (shoelace): positive for vertices counter-clockwise in the y-up sense."""
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """The intersection of two convex polygons (Sutherland-Hodgman): `subject` clipped by each
    edge of `clip` in turn. Both [N, 2], either orientation; the result may be empty ([0, 2]).
    The loop runs on Python floats: for polygons of a few vertices numpy's per-call cost would
    dominate, and the expert calls this thousands of times per episode."""
    clip = np.asarray(clip, dtype=float)
    if polygon_area(clip) < 0:
        clip = clip[::-1]
    output = [tuple(p) for p in np.asarray(subject, dtype=float).tolist()]
    corners = [tuple(p) for p in clip.tolist()]
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
        if not output:
            break
        ex, ey = bx - ax, by - ay
        # Positive on the inner (left) side of the counter-clockwise edge a -> b.
        side = [ex * (py - ay) - ey * (px - ax) for px, py in output]
        kept = []
        for i, (p, sp) in enumerate(zip(output, side)):
            q, sq = output[i + 1 - len(output)], side[i + 1 - len(output)]
            if sp >= 0:
                kept.append(p)
            if (sp >= 0) != (sq >= 0):  # the edge p -> q crosses the clipping line
                f = sp / (sp - sq)
                kept.append((p[0] + (q[0] - p[0]) * f, p[1] + (q[1] - p[1]) * f))
        output = kept
    return np.array(output, dtype=float).reshape(-1, 2)


def coverage(pose, goal=GOAL_POSE) -> float:
    """Area of the T at `pose` inside the T at `goal`, over the T's area. The T's two pieces
    meet only along an edge, so the overlap is the sum over the four pairs of convex pieces."""
    if math.hypot(pose[0] - goal[0], pose[1] - goal[1]) >= 2 * T_RADIUS:
        return 0.0
    pieces = [placed(p, pose) for p in T_PIECES]
    targets = [placed(p, goal) for p in T_PIECES]
    overlap = sum(abs(polygon_area(clip_convex(p, t))) for p in pieces for t in targets)
    return min(1.0, overlap / T_AREA)


def distance_to_t(points, pose) -> np.ndarray:
    """Euclidean distance from world points [..., 2] to the T at pose (0 inside it)."""
    local = to_body_frame(points, pose)
    distances = []
    for piece in T_PIECES:
        low, high = piece.min(0), piece.max(0)
        outside = np.maximum(np.maximum(low - local, local - high), 0.0)
        distances.append(np.hypot(outside[..., 0], outside[..., 1]))
    return np.minimum(*distances)


def agent_touches(observation, margin: float = 1.0) -> bool:
    """Whether the agent of an observation touches the block (within `margin` pixels)."""
    observation = np.asarray(observation, dtype=float)
    return bool(distance_to_t(observation[:2], observation[2:5]) <= AGENT_RADIUS + margin)


@dataclass(frozen=True)
class Step:
    observation: np.ndarray
    reward: float
    done: bool
    info: dict


class PushT:
    """The environment: `reset(seed)` -> observation; `step(action)` -> Step (observation,
    reward = coverage, done, info); `render(size)` -> RGB uint8 image [size, size, 3].

    An episode ends at success (coverage >= SUCCESS_COVERAGE) or after `max_steps` actions.
    `reset(state=...)` starts from a given (agent x, agent y, block x, block y, angle) instead,
    with everything at rest: what a planner uses to try a push.
    """

    def __init__(self, max_steps: int = MAX_STEPS):
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.max_steps = int(max_steps)
        self.space = None

    # -- state ---------------------------------------------------------------------------
    def reset(self, seed: int | None = None, state=None) -> np.ndarray:
        if (seed is None) == (state is None):
            raise ValueError("reset takes a seed or a state (agent x, agent y, block x, block y, angle), one of them")
        if state is None:
            state = initial_state(seed)
        state = np.asarray(state, dtype=float)
        if state.shape != (OBS_DIM,) or not np.isfinite(state).all():
            raise ValueError(f"a state is {OBS_DIM} finite numbers {OBS_NAMES}, got {state!r}")
        self._build(state)
        self.steps, self.target = 0, state[:2].copy()
        return self.observation()

    def place(self, state) -> None:
        """Move agent and block to a state, at rest, in the existing space: a planner's cheap
        reset for trial pushes (unlike `reset`, the solver's contact cache carries over, so a
        trajectory after `place` is deterministic but not the same as after `reset(state=...)`)."""
        if self.space is None:
            self.reset(state=state)
            return
        self.agent.position, self.agent.velocity = (float(state[0]), float(state[1])), (0.0, 0.0)
        self.block.position, self.block.angle = (float(state[2]), float(state[3])), float(state[4])
        self.block.velocity, self.block.angular_velocity = (0.0, 0.0), 0.0
        self.space.reindex_shapes_for_body(self.block)
        self.space.reindex_shapes_for_body(self.agent)
        self.target = np.array([float(state[0]), float(state[1])])

    def _build(self, state: np.ndarray) -> None:
        pm = need_pymunk()
        self.space = pm.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0  # no momentum: the block moves only while pushed
        walls = [((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506))]
        for a, b in walls:
            self.space.add(pm.Segment(self.space.static_body, a, b, 2.0))
        self.agent = pm.Body(body_type=pm.Body.KINEMATIC)
        self.agent.position = tuple(state[:2])
        self.space.add(self.agent, pm.Circle(self.agent, AGENT_RADIUS))
        mass = 1.0
        moment = sum(pm.moment_for_poly(mass * abs(polygon_area(p)) / T_AREA, [tuple(v) for v in p])
                     for p in T_PIECES)
        self.block = pm.Body(mass, moment)
        shapes = [pm.Poly(self.block, [tuple(v) for v in p]) for p in T_PIECES]
        self.block.position = tuple(state[2:4])
        self.block.angle = float(state[4])
        self.space.add(self.block, *shapes)

    def observation(self) -> np.ndarray:
        self._check_reset()
        return np.array([*self.agent.position, *self.block.position, self.block.angle % (2 * math.pi)])

    def block_pose(self) -> tuple[float, float, float]:
        self._check_reset()
        return (*self.block.position, self.block.angle)

    def _check_reset(self) -> None:
        if self.space is None:
            raise RuntimeError("call reset(seed) before using the environment")

    # -- dynamics ------------------------------------------------------------------------
    def step(self, action) -> Step:
        self._check_reset()
        action = np.asarray(action, dtype=float)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"an action is the agent's target position (x, y), shape ({ACTION_DIM},); "
                             f"got shape {action.shape}")
        if not np.isfinite(action).all():
            raise ValueError(f"an action must be finite, got {action}")
        self.advance(action)
        score = coverage(self.block_pose())
        success = score >= SUCCESS_COVERAGE
        done = success or self.steps >= self.max_steps
        return Step(self.observation(), score, done, {"coverage": score, "success": success, "steps": self.steps})

    def advance(self, action: np.ndarray) -> None:
        """One control step of physics towards a checked action, without scoring it (a planner's
        trial push needs only where the block ends up)."""
        # Targets outside the arena are clipped to it (the original's action space).
        self.target = np.clip(action, 0.0, ARENA)
        # Python floats: a numpy round trip per physics step would cost more than the physics.
        tx, ty = float(self.target[0]), float(self.target[1])
        dt = 1.0 / SIM_HZ
        for _ in range(SIM_HZ // CONTROL_HZ):
            (px, py), (vx, vy) = self.agent.position, self.agent.velocity
            self.agent.velocity = (vx + (KP * (tx - px) - KV * vx) * dt, vy + (KP * (ty - py) - KV * vy) * dt)
            self.space.step(dt)
        self.steps += 1

    # -- pictures ------------------------------------------------------------------------
    def render(self, size: int = 256) -> np.ndarray:
        """The arena as an RGB uint8 image [size, size, 3]: target T outlined in green, the
        block in slate blue, the agent in orange with a cross at its target."""
        from PIL import Image, ImageDraw

        self._check_reset()
        if size < 16:
            raise ValueError(f"render size must be at least 16 pixels, got {size}")
        scale = size / ARENA
        image = Image.new("RGB", (size, size), (245, 245, 240))
        draw = ImageDraw.Draw(image)

        def pixels(points):
            return [tuple(p) for p in (np.asarray(points) * scale).tolist()]

        width = max(1, round(2 * scale))
        for piece in T_PIECES:
            draw.polygon(pixels(placed(piece, self.block_pose())), fill=(110, 125, 170))
        draw.polygon(pixels(placed(T_OUTLINE, GOAL_POSE)), outline=(40, 160, 70), width=width)
        x, y = np.asarray(self.agent.position) * scale
        r = AGENT_RADIUS * scale
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(235, 130, 40))
        tx, ty = self.target * scale
        c = max(2.0, 4 * scale)
        draw.line([tx - c, ty, tx + c, ty], fill=(120, 60, 20), width=1)
        draw.line([tx, ty - c, tx, ty + c], fill=(120, 60, 20), width=1)
        return np.asarray(image)


def initial_state(seed: int) -> np.ndarray:
    """The start of episode `seed`: agent anywhere in [50, 450]^2, block centre in [100, 400]^2
    at any angle (the original's ranges), the agent redrawn until it is clear of the block and
    the block redrawn while it already covers the target by more than a tenth."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"a seed is a non-negative integer, got {seed!r}")
    rng = np.random.RandomState(int(seed))
    while True:
        block = np.array([*rng.uniform(100, 400, 2), rng.uniform(-math.pi, math.pi)])
        if coverage(block) > 0.1:
            continue
        while True:
            agent = rng.uniform(50, 450, 2)
            if distance_to_t(agent, block) > AGENT_RADIUS + 10:
                return np.concatenate([agent, block])
