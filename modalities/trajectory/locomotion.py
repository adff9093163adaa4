"""Locomotion behaviour policies for Diffuser's MuJoCo setting (Janner et al. 2022; D4RL's recipe, Fu et al. 2020).

D4RL's locomotion datasets are rollouts of SAC policies (Haarnoja et al. 2018). Here the policies are trained once with
Stable-Baselines3 (benchmarks/locomotion/train_sac.py) and only their actors are kept: `Actor` is SAC's squashed
Gaussian policy, a = low + (tanh(mu(s) + sigma(s) e) + 1) (high - low) / 2 with e ~ N(0, I) (e = 0 when deterministic),
on a ReLU MLP, read from a safetensors file (no Stable-Baselines3 needed to act), its noise from a seeded generator.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from diffsuite.core.utils import save_tensors

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SAC's clamp of the log standard deviation (Stable-Baselines3's values)
ENVS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5")
ACTORS = Path(__file__).resolve().parent / "actors"  # the committed actors: actors/<env>/actor_*.safetensors, levels.json


def mlp(d_in: int, hidden: tuple) -> tuple[nn.Sequential, int]:
    """(Linear-ReLU layers of the given widths, the output width)."""
    layers, d = [], d_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    return nn.Sequential(*layers), d


def squash(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """tanh(u) rescaled from [-1, 1] to the action bounds [low, high] (SAC's squashing, SB3's unscale_action)."""
    return low + (torch.tanh(u) + 1) * (high - low) / 2


def as_batch(obs) -> tuple[torch.Tensor, bool]:
    """(numpy observation(s) as a float32 batch, whether a single one was given)."""
    x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
    return (x[None], True) if x.ndim == 1 else (x, False)


class Actor(nn.Module):
    """SAC's actor: ReLU MLP trunk, a mean and a log-std head, tanh squashing, rescaled to the action bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple = (256, 256), low=None, high=None):
        super().__init__()
        self.latent_pi, d = mlp(obs_dim, hidden)
        self.mu, self.log_std = nn.Linear(d, act_dim), nn.Linear(d, act_dim)
        self.register_buffer("low", torch.as_tensor(-np.ones(act_dim) if low is None else low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(np.ones(act_dim) if high is None else high, dtype=torch.float32))

    @torch.no_grad()
    def forward(self, obs: torch.Tensor, generator: Optional[torch.Generator] = None,
                deterministic: bool = False) -> torch.Tensor:
        h = self.latent_pi(obs.float())
        u = self.mu(h)
        if not deterministic:
            std = self.log_std(h).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
            u = u + std * torch.randn(u.shape, generator=generator, dtype=u.dtype)
        return squash(u, self.low, self.high)

    def act(self, obs: np.ndarray, generator: Optional[torch.Generator] = None, deterministic: bool = False) -> np.ndarray:
        """One action (or a batch) for numpy observations."""
        x, single = as_batch(obs)
        a = self(x, generator, deterministic).numpy()
        return a[0] if single else a


def save_actor(actor: Actor, path: str | Path, meta: dict) -> Path:
    """The actor's weights and a JSON of its shape and provenance (env, steps, return) in one safetensors file."""
    hidden = [m.out_features for m in actor.latent_pi if isinstance(m, nn.Linear)]
    info = {**meta, "obs_dim": actor.latent_pi[0].in_features, "act_dim": actor.mu.out_features, "hidden": hidden}
    return save_tensors(path, actor.state_dict(), metadata={"actor": json.dumps(info)})


def load_actor(path: str | Path) -> tuple[Actor, dict]:
    """(actor in eval mode, its metadata) from save_actor's file; a missing or foreign file is a one-line error."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"actor weights not found: {path}")
    with safe_open(str(path), "pt") as f:
        raw = (f.metadata() or {}).get("actor")
    if raw is None:
        raise ValueError(f"{path}: not an actor file written by save_actor (no 'actor' metadata)")
    meta = json.loads(raw)
    actor = Actor(meta["obs_dim"], meta["act_dim"], tuple(meta["hidden"]))
    actor.load_state_dict(load_file(str(path)))
    return actor.eval(), meta


def actor_from_sb3(model) -> Actor:
    """Our Actor with the weights of a Stable-Baselines3 SAC model's actor (same layout, squashing and bounds)."""
    pol = model.policy.actor
    space = model.action_space
    hidden = tuple(m.out_features for m in pol.latent_pi if isinstance(m, nn.Linear))
    actor = Actor(pol.mu.in_features if not hidden else pol.latent_pi[0].in_features, pol.mu.out_features, hidden,
                  space.low, space.high)
    actor.latent_pi.load_state_dict(pol.latent_pi.state_dict())
    actor.mu.load_state_dict(pol.mu.state_dict())
    actor.log_std.load_state_dict(pol.log_std.state_dict())
    return actor.eval()


class RandomPolicy:
    """Uniformly random actions in the bounds, from a seeded numpy generator (the floor of the normalised score)."""

    def __init__(self, low, high, seed: int = 0):
        self.low, self.high, self.rng = low, high, np.random.default_rng(seed)

    def act(self, obs, generator=None, deterministic: bool = True) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


def evaluate_actor(policy, env_id: str, episodes: int = 10, seed: int = 0, deterministic: bool = True,
                   max_steps: int = 1000) -> dict:
    """Undiscounted returns of any `policy.act(obs, generator, deterministic)` (an Actor, a BCPolicy, a RandomPolicy)
    over `episodes` episodes (env seeds seed, seed + 1, ...; its noise from one generator seeded with seed), actions
    clipped to the bounds: mean, std, each return and length."""
    import gymnasium as gym
    env = gym.make(env_id, max_episode_steps=max_steps)
    low, high = env.action_space.low, env.action_space.high
    g = torch.Generator().manual_seed(seed)
    returns, lengths = [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        total, n, done = 0.0, 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(np.clip(policy.act(obs, g, deterministic), low, high))
            total, n, done = total + float(r), n + 1, term or trunc
        returns.append(total)
        lengths.append(n)
    env.close()
    return {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns, "lengths": lengths}


# ---------------------------------------------------------------- levels and datasets (D4RL's recipe)

MEDIUM_FRACTION = 0.5  # medium: the first snapshot whose 10-episode return reaches this fraction of the best one's
DATASETS = ("medium", "medium-replay", "medium-expert")
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def select_levels(curve: list[dict], fraction: float = MEDIUM_FRACTION) -> dict:
    """The rule, fixed before any policy was trained: expert = the snapshot with the best evaluation return; medium =
    the first snapshot whose return reaches `fraction` of the expert's (D4RL's medium sits at 40-75% of its expert);
    replay = every snapshot up to and including medium, oldest first. `curve`: entries with env_steps, return_mean.
    A best return <= 0 (a policy no better than standing still) has no fraction: medium is then the best one."""
    if not curve:
        raise ValueError("select_levels: the evaluation curve is empty")
    best = max(curve, key=lambda c: c["return_mean"])
    target = fraction * best["return_mean"] if best["return_mean"] > 0 else best["return_mean"]
    medium = next(c for c in curve if c["return_mean"] >= target)
    replay = [c for c in curve if c["env_steps"] <= medium["env_steps"]]
    return {"rule": f"medium = first return >= {fraction} x best; expert = best", "fraction": fraction,
            "expert": best["env_steps"], "expert_return": best["return_mean"], "medium": medium["env_steps"],
            "medium_return": medium["return_mean"], "replay": [c["env_steps"] for c in replay]}


def rollouts(actors: list[Actor], env_id: str, n_steps: int, seed: int, max_episode_steps: int = 1000,
             progress: bool = False) -> dict[str, np.ndarray]:
    """n_steps of stochastic rollouts (the actors' Gaussian noise from one seeded generator), the actors taking equal
    consecutive shares in order; episodes of at most max_episode_steps: `terminals` where the environment ended the
    episode (a fall), `timeouts` where the step limit or the end of an actor's share cut it, as D4RL keeps them apart."""
    import gymnasium as gym
    from tqdm.auto import tqdm
    env = gym.make(env_id, max_episode_steps=max_episode_steps)
    g = torch.Generator().manual_seed(seed)
    out = {k: [] for k in KEYS}
    shares = [n_steps // len(actors) + (i < n_steps % len(actors)) for i in range(len(actors))]
    episode = 0
    bar = tqdm(total=n_steps, disable=not progress, desc=f"rollouts {env_id}", mininterval=1.0)
    for actor, share in zip(actors, shares):
        done, left = True, share
        while left > 0:
            if done:
                obs, _ = env.reset(seed=seed * 1_000_003 + episode)
                episode += 1
            a = actor.act(obs, g)
            nxt, r, term, trunc, _ = env.step(a)
            left -= 1
            cut = bool(trunc) or (left == 0 and not term)
            for k, v in zip(KEYS, (obs, a, r, bool(term), cut, nxt)):
                out[k].append(v)
            obs, done = nxt, bool(term or trunc)
            bar.update(1)
    bar.close()
    env.close()
    dtypes = {"terminals": bool, "timeouts": bool}
    return {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in out.items()}


def actors_folder(env_id: str, actors: Optional[str] = None) -> Path:
    """Where an environment's behaviour policies are: `actors` if given, else the committed ACTORS/<env>."""
    return Path(actors) if actors else ACTORS / env_id


def actor_file(folder: Path, steps: int) -> Path:
    return Path(folder) / f"actor_{steps:08d}.safetensors"


def read_levels(folder: Path, env_id: str) -> dict:
    """levels.json of an actors folder; without one, a FileNotFoundError saying how to make it."""
    f = Path(folder) / "levels.json"
    if not f.is_file():
        raise FileNotFoundError(f"no behaviour policies for {env_id} in {folder} (actor_*.safetensors and levels.json): "
                                f"train them with benchmarks/locomotion/train_sac.py --env {env_id} and export them with "
                                "benchmarks/locomotion/export_actors.py, or set data.actors")
    return json.loads(f.read_text())


def actors_for(dataset: str, folder: Path, levels: dict) -> list[list[Path]]:
    """The actor files of a dataset, as parts joined in order: medium [[medium]], medium-replay [[each snapshot up to
    medium]], medium-expert [[medium], [expert]]."""
    f = lambda steps: actor_file(folder, steps)  # noqa: E731
    if dataset == "medium":
        return [[f(levels["medium"])]]
    if dataset == "medium-replay":
        return [[f(s) for s in levels["replay"]]]
    if dataset == "medium-expert":
        return [[f(levels["medium"])], [f(levels["expert"])]]
    raise ValueError(f"locomotion dataset {dataset!r}: expected one of {list(DATASETS)}")


def generate_dataset(dataset: str, env_id: str, folder: Path, n_steps: int, seed: int = 0,
                     progress: bool = True) -> tuple[dict, dict]:
    """(arrays, settings) of a D4RL-style locomotion dataset from the actors in `folder` (with levels.json): each part
    n_steps of rollouts (medium-expert: two parts, as D4RL joins medium and expert), deterministic given the actor
    files (their sha256 in the settings) and the seed."""
    from diffsuite.core.utils import sha256_file
    levels = read_levels(folder, env_id)
    parts = actors_for(dataset, Path(folder), levels)
    data = [rollouts([load_actor(p)[0] for p in paths], env_id, n_steps, seed + i, progress=progress)
            for i, paths in enumerate(parts)]
    joined = {k: np.concatenate([d[k] for d in data]) for k in KEYS}
    settings = {"dataset": dataset, "env_id": env_id, "n_steps_per_part": n_steps, "seed": seed, "levels": levels,
                "actors": {p.name: sha256_file(p) for paths in parts for p in paths}, "format_version": 1}
    return joined, settings


def dataset_path(dataset: str, env_id: str, folder: Path, n_steps: int, seed: int = 0, progress: bool = True) -> Path:
    """The cached dataset (generated on first use) with a manifest of its settings and content hash."""
    import hashlib
    import io
    from diffsuite.core.utils import atomic_write_bytes, atomic_write_json, cache_dir, sha256_file
    read_levels(folder, env_id)  # (a clear error without them)
    actors = sorted(Path(folder).glob("actor_*.safetensors"))
    key = hashlib.sha256(json.dumps([dataset, env_id, n_steps, seed, (Path(folder) / "levels.json").read_text(),
                                     [sha256_file(p) for p in actors]]).encode()).hexdigest()[:12]
    d = cache_dir("trajectory", f"{env_id}_{dataset}_{n_steps}_seed{seed}_{key}")
    path, manifest = d / "dataset.npz", d / "manifest.json"
    if path.is_file() and manifest.is_file() and json.loads(manifest.read_text()).get("sha256") == sha256_file(path):
        return path
    data, settings = generate_dataset(dataset, env_id, folder, n_steps, seed, progress)
    buf = io.BytesIO()
    np.savez_compressed(buf, **data, settings=np.array(json.dumps(settings, sort_keys=True)))
    atomic_write_bytes(path, buf.getvalue())
    atomic_write_json(manifest, {"settings": settings, "file": path.name, "sha256": sha256_file(path)})
    return path


# ---------------------------------------------------------------- planning in the environment (Diffuser, Alg. 1)

#: D4RL's normalisation constants (random, expert returns) for its v2 environments; v5 differs (simulator, Walker2d's
#: foot friction, the healthy reward on the last step), so scores against them are not comparable digit for digit
D4RL_REFERENCE = {"Hopper-v5": (-20.272305, 3234.3), "HalfCheetah-v5": (-280.178953, 12135.0),
                  "Walker2d-v5": (1.629008, 4592.3)}

def _observation_names(joints: list[str]) -> list[str]:
    """gymnasium MuJoCo's locomotion observation: qpos without the root's x (height, pitch, joint angles), then qvel."""
    return ["height", "pitch", *joints, "x velocity", "z velocity", "pitch velocity", *[f"{j} velocity" for j in joints]]


#: What each dimension of an environment's observation is ("x velocity": what the forward reward pays for).
OBSERVATION_NAMES = {"Hopper-v5": _observation_names(["thigh", "leg", "foot"]),
                     "Walker2d-v5": _observation_names(["right thigh", "right leg", "right foot", "left thigh",
                                                        "left leg", "left foot"]),
                     "HalfCheetah-v5": _observation_names(["back thigh", "back shin", "back foot", "front thigh",
                                                           "front shin", "front foot"])}


def set_state(env, obs) -> None:
    """Put a gymnasium MuJoCo locomotion environment in the state an observation describes: qpos without the root's x
    (set to 0: the dynamics on a flat floor do not depend on it), then qvel. The environment must have been reset."""
    u = env.unwrapped
    obs, nq = np.asarray(obs, np.float64), u.model.nq
    if obs.shape != (nq - 1 + u.model.nv,):
        raise ValueError(f"{u.spec.id}: an observation of shape {obs.shape} does not describe a state; expected "
                         f"({nq - 1 + u.model.nv},) = qpos without x, then qvel")
    u.set_state(np.concatenate([[0.0], obs[:nq - 1]]), obs[nq - 1:])


def play_from(env, obs, actions, steps: Optional[int] = None) -> tuple[np.ndarray, Optional[int]]:
    """Play from the state `obs` describes either a plan's actions open loop ((n, A) array) or, for `steps` steps, a
    closed-loop policy actions(k, observation) -> action: the observation after each action (NaN after the episode
    ends) and the number of actions after which gymnasium's termination ended it (None if it did not)."""
    act = actions if callable(actions) else (lambda k, o: actions[k])
    steps = len(actions) if steps is None else steps
    set_state(env, obs)
    low, high = env.action_space.low, env.action_space.high
    out = np.full((steps, len(obs)), np.nan)
    for k in range(steps):
        out[k], _, term, _, _ = env.step(np.clip(act(k, obs), low, high))
        obs = out[k]
        if term:
            return out, k + 1
    return out, None


def plan_episode(env, planner, seed: int, replan_every: int = 1, max_steps: int = 1000, frames_every: int = 0) -> dict:
    """One episode of receding-horizon planning: plan from the current state (start-state inpainting, value guidance
    and ranking as the planner is configured), execute the plan's actions from its first, replan every
    `replan_every` steps (1: every step, Diffuser's locomotion setting) with the previous plan shifted for a warm
    start. Returns the return, length, whether it fell, the last observation (what ended it: height or pitch out of
    the healthy range), plan seconds, and frames when the env renders."""
    low, high = env.action_space.low, env.action_space.high
    g = torch.Generator().manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    total, plan, k, secs, frames, term = 0.0, None, 0, [], [], False
    planner.prev = None
    for step in range(max_steps):
        if plan is None or k >= replan_every or k >= len(plan.actions):
            plan = planner.plan(obs, None, generator=g, shift=k)
            k = 0
            secs.append(plan.seconds)
        obs, r, term, trunc, _ = env.step(np.clip(plan.actions[k], low, high))
        total, k = total + float(r), k + 1
        if frames_every and step % frames_every == 0:
            frames.append(env.render())
        if term or trunc:
            break
    return {"seed": seed, "return": total, "length": step + 1, "terminated": bool(term),
            "final_observation": np.asarray(obs, float).round(4).tolist(), "plan_seconds": secs, "frames": frames}


def planned_episode(env_id: str, planner, seed: int, replan_every: int = 1, filmstrip: bool = False) -> dict:
    """`plan_episode` in a fresh 1000-step environment, closed afterwards; with filmstrip a frame every 25 steps
    (MuJoCo rendering through EGL unless MUJOCO_GL says otherwise)."""
    import os
    import gymnasium as gym
    if filmstrip:
        os.environ.setdefault("MUJOCO_GL", "egl")
    env = gym.make(env_id, max_episode_steps=1000,
                   **({"render_mode": "rgb_array", "width": 160, "height": 120} if filmstrip else {}))
    try:
        return plan_episode(env, planner, seed, replan_every, frames_every=25 if filmstrip else 0)
    finally:
        env.close()


def random_returns(env_id: str, episodes: int, seed: int = 0) -> list[float]:
    """Returns of uniformly random actions (the floor of the normalised score)."""
    import gymnasium as gym
    space = gym.make(env_id).action_space
    return evaluate_actor(RandomPolicy(space.low, space.high, seed), env_id, episodes, seed)["returns"]


def reference_returns(env_id: str, expert: Path, episodes: int = 100, seed: int = 100_000) -> dict:
    """Our normalisation references, cached: the mean return of random actions and of the expert actor
    (deterministic), each over `episodes` episodes of the same environment."""
    from diffsuite.core.utils import atomic_write_json, cache_dir, sha256_file
    key = f"{env_id}-{episodes}-{seed}-{sha256_file(expert)[:12]}"
    f = cache_dir("trajectory", "locomotion-references") / f"{key}.json"
    if f.is_file():
        return json.loads(f.read_text())
    ref = {"random": float(np.mean(random_returns(env_id, episodes, seed))),
           "expert": evaluate_actor(load_actor(expert)[0], env_id, episodes, seed)["mean"], "episodes": episodes,
           "expert_actor": expert.name}
    atomic_write_json(f, ref)
    return ref


def episode_returns(rewards, terminals, timeouts) -> np.ndarray:
    """The undiscounted return of each whole episode of a D4RL-style dataset (an episode ends at a terminal or a
    timeout; steps after the last end belong to no whole episode)."""
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool)) + 1
    return np.array([part.sum() for part in np.split(np.asarray(rewards, np.float64), ends)[:len(ends)]])


def normalized(R: float, random: float, expert: float) -> float:
    """D4RL's normalised score: 100 (R - random) / (expert - random)."""
    return 100.0 * (R - random) / (expert - random)


def score(returns, ref: dict, env_id: str) -> dict:
    """Mean and spread of returns and of their normalised scores against our references (`ref`: random, expert) and
    D4RL's constants."""
    R = np.asarray(returns, dtype=np.float64)
    s = [normalized(r, ref["random"], ref["expert"]) for r in R]
    return {"episodes": len(R), "return_mean": float(R.mean()), "return_std": float(R.std()),
            "normalized_score": float(np.mean(s)), "normalized_score_std": float(np.std(s)),
            "normalized_score_d4rl_constants": float(np.mean([normalized(r, *D4RL_REFERENCE[env_id]) for r in R]))}


def filmstrip(frames: list, path: Path, per_row: int = 8) -> Optional[Path]:
    """A PNG of frames side by side (rows of per_row), or None without frames."""
    if not frames:
        return None
    from PIL import Image
    h, w = frames[0].shape[:2]
    rows = -(-len(frames) // per_row)
    sheet = np.full((rows * h, min(len(frames), per_row) * w, 3), 255, np.uint8)
    for i, fr in enumerate(frames):
        r, c = divmod(i, per_row)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = fr
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path


# ---------------------------------------------------------------- behaviour cloning: the floor of offline RL

class BCPolicy(nn.Module):
    """a = low + (tanh(MLP(s)) + 1) (high - low) / 2, fitted to the dataset's actions by MSE (behaviour cloning)."""

    def __init__(self, obs_dim: int, act_dim: int, low, high, hidden: tuple = (256, 256)):
        super().__init__()
        trunk, d = mlp(obs_dim, hidden)
        self.net = nn.Sequential(*trunk, nn.Linear(d, act_dim))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.register_buffer("mu", torch.zeros(obs_dim))
        self.register_buffer("sd", torch.ones(obs_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return squash(self.net((obs.float() - self.mu) / self.sd), self.low, self.high)

    @torch.no_grad()
    def act(self, obs: np.ndarray, generator=None, deterministic: bool = True) -> np.ndarray:
        x, single = as_batch(obs)
        a = self(x).numpy()
        return a[0] if single else a


def train_bc(observations: np.ndarray, actions: np.ndarray, low, high, steps: int = 20000, batch: int = 256,
             lr: float = 1e-3, seed: int = 0) -> BCPolicy:
    """Behaviour cloning: MSE on (state, action) pairs, Adam, observations standardised by the data's statistics."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs, act = torch.as_tensor(observations, dtype=torch.float32), torch.as_tensor(actions, dtype=torch.float32)
    pi = BCPolicy(obs.shape[1], act.shape[1], low, high)
    pi.mu.copy_(obs.mean(0))
    pi.sd.copy_(obs.std(0) + 1e-6)
    opt = torch.optim.Adam(pi.net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(obs), (batch,), generator=g)
        loss = (pi(obs[idx]) - act[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return pi.eval()
