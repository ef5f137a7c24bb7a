"""Policies for behaviour cloning, trained side by side from one set of demonstrations.

- `mse`: an MLP regressing the action chunk (mean squared error): it averages the modes.
- `mdn`: an MLP whose output is a Gaussian mixture over the chunk (mixture-density network).
- `cvae`: a conditional VAE p(chunk | obs, z) trained by cvae's own Trainer, with a fixed N(0, I)
  prior (`prior = "standard"`), a learned conditional prior p(z | obs) (`prior = "learned"`) or the
  core's learned Gaussian mixture p(z | obs) (`prior = "mixture"`, 5 components).

A `Policy` turns any of them into `policy.act(obs) -> action` for a gymnasium loop. How its latent
noise is drawn is fixed when it is built (`z`):

| z | noise | queries the model |
|---|---|---|
| `step` | fresh at every query | every step, executing the first action of the chunk |
| `chunk` | fresh at every query | every `chunk` steps, executing the whole chunk open-loop (as ACT) |
| `episode` | drawn once per episode | every step |
| `zero` | none: z at the prior's mean (ACT's test-time rule) | every step |

For a CVAE, z = mu(obs) + sigma(obs) * eps with the noise eps (for the fixed prior mu = 0, sigma = 1;
for a mixture prior the noise also holds the uniform number that picks the component, and `zero`
takes the mean of the most probable one). For the mixture-density head the noise is the uniform
number that picks the component, whose mean is the action (low-noise evaluation, as robomimic's
BC-GMM), and `zero` takes the most probable component. MSE has no noise. `execute` overrides how
many actions of each predicted chunk are run before the next query.

Image observations (H, W, C) go through the `pixels` condition encoder (cvae_bc.pixels): the CVAE's
condition features, and the first layers of the MSE and mixture-density heads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import cvae
from cvae import config as config_mod

__all__ = ["Policy", "load_policy", "train_policies", "POLICIES", "Z_RULES", "MLPRegressor", "MixtureDensity",
           "run_info"]

Z_RULES = ("step", "chunk", "episode", "zero")
RUN_FILE = "bc.json"

# name -> settings of the policies `cvae bc train` trains by default
POLICIES: dict[str, dict[str, Any]] = {
    "mse": {"kind": "mse"},
    "mdn": {"kind": "mdn", "components": 5},
    "cvae_fixed": {"kind": "cvae", "prior": "standard"},
    "cvae_learned": {"kind": "cvae", "prior": "learned"},
    "cvae_mixture": {"kind": "cvae", "prior": "mixture", "prior_options": {"components": 5}},
}

# settings of the CVAE policies (a cvae config); `cvae bc train --set` changes them
CVAE_CONFIG: dict[str, Any] = {
    "data": {"name": "bc_demos", "batch_size": 256},
    "model": {"architecture": "mlp", "architecture_options": {"hidden": [128, 128]}, "latent_dim": 4,
              "likelihood": "gaussian_learned", "likelihood_options": {}, "prior_options": {"hidden": [128, 128]}},
    "train": {"epochs": 150, "lr": 1e-3, "beta": 1.0, "progress": False, "keep_checkpoints": 1,
              "checkpoint_every": 10},
    "eval": {"iwae_samples": 16},
}


def observation_encoder(obs_shape: int | Sequence[int]) -> nn.Module:
    """The heads' first layers: nothing for a vector observation, the `pixels` encoder for an image;
    `out_features` is the width it gives."""
    from .pixels import PixelEncoder

    shape = (int(obs_shape),) if isinstance(obs_shape, (int, np.integer)) else tuple(int(s) for s in obs_shape)
    if len(shape) == 3:
        return PixelEncoder(cvae.ConditionInfo("pixels", shape=shape))
    if len(shape) != 1:
        raise cvae.CVAEError(f"observations must be vectors or images (height, width, channels), got shape {shape}")
    encoder = nn.Flatten()
    encoder.out_features = shape[0]
    return encoder


def _mlp(inputs: int, hidden: Sequence[int], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inputs, int(h)), nn.SiLU()]
        inputs = int(h)
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)


class MLPRegressor(nn.Module):
    """obs -> action chunk, trained with mean squared error. `obs` is the observation's size or shape."""

    def __init__(self, obs: int | Sequence[int], chunk_shape: Sequence[int], hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.chunk_shape = tuple(int(s) for s in chunk_shape)
        self.encoder = observation_encoder(obs)
        self.net = _mlp(self.encoder.out_features, hidden, math.prod(self.chunk_shape))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(self.encoder(obs)).view(len(obs), *self.chunk_shape)

    def loss(self, obs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self(obs), y, reduction="none").flatten(1).sum(1).mean()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor | None:
        return None

    def predict(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return self(obs)


class MixtureDensity(nn.Module):
    """obs -> a mixture of `components` diagonal Gaussians over the flattened action chunk. The
    standard deviations are capped at exp(max_log_std) (0.2 by default, for actions in [-1, 1]), so
    that one broad component cannot cover two modes and put its mean between them, and the
    components start from different means."""

    def __init__(self, obs: int | Sequence[int], chunk_shape: Sequence[int], hidden: Sequence[int] = (256, 256),
                 components: int = 5, min_log_std: float = -5.0, max_log_std: float = -1.6) -> None:
        super().__init__()
        if int(components) < 1:
            raise cvae.CVAEError(f"mdn: components must be >= 1, got {components!r}")
        self.chunk_shape = tuple(int(s) for s in chunk_shape)
        self.k, self.d = int(components), math.prod(self.chunk_shape)
        self.lo, self.hi = float(min_log_std), float(max_log_std)
        self.encoder = observation_encoder(obs)
        self.net = _mlp(self.encoder.out_features, hidden, self.k * (1 + 2 * self.d))
        with torch.no_grad():  # distinct starting means, spread over the action range
            self.net[-1].bias[self.k:].view(self.k, 2, self.d)[:, 0].uniform_(-1.0, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(self.encoder(obs))
        logits = out[:, :self.k]
        mean, raw = out[:, self.k:].view(len(obs), self.k, 2, self.d).unbind(2)
        log_std = self.lo + (self.hi - self.lo) * torch.sigmoid(raw)
        return F.log_softmax(logits, dim=1), mean, log_std

    def loss(self, obs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_w, mean, log_std = self(obs)
        y = y.flatten(1).unsqueeze(1)
        lp = (-0.5 * ((y - mean) * torch.exp(-log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(2)
        return -torch.logsumexp(log_w + lp, dim=1).mean()

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.rand(n, 1, generator=generator)

    def predict(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """The mean of the component that the uniform `noise` (n, 1) picks by inverse CDF, or of the
        most likely component when `noise` is None."""
        log_w, mean, _ = self(obs)
        if noise is None:
            pick = log_w.argmax(1)
        else:
            cdf = log_w.exp().cumsum(1)
            pick = (cdf < noise[:, :1]).sum(1).clamp(max=self.k - 1)
        return mean[torch.arange(len(obs)), pick].view(len(obs), *self.chunk_shape)


class _CVAEPredictor(nn.Module):
    """A trained cvae.CVAE as a policy head: z = mu(obs) + sigma(obs) * eps, decoded to its mean.
    With a mixture prior (one that has `draw`), the noise also holds the uniform number that picks
    the component."""

    def __init__(self, model: cvae.CVAE) -> None:
        super().__init__()
        self.model = model
        self.mixture = hasattr(model.prior, "draw")

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(n, self.model.latent_dim, generator=generator)
        return torch.cat([eps, torch.rand(n, 1, generator=generator)], 1) if self.mixture else eps

    def predict(self, obs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        h = self.model.features({"obs": obs})
        if noise is None:
            z = self.model.prior.mode(h)
        elif self.mixture:
            z = self.model.prior.draw(h, noise[:, :-1], noise[:, -1:])
        else:
            mu, logvar = self.model.prior.params(h)
            z = mu + torch.exp(0.5 * logvar) * noise
        return self.model.decode(z, h, mode="mean")


class Policy:
    """`act(obs)` for a gymnasium loop: one observation (a vector (obs_dim,) or an image (H, W, C))
    gives one action (act_dim,); a batch (n, ...) of parallel episodes gives (n, act_dim). Call
    `reset()` when an episode starts (a batch of another size resets too). Actions are clipped to the
    action space. `env_kwargs` are the keyword arguments the demonstrations' environment was made
    with (e.g. `{"obs": "image", "image_width": 48}`): make yours the same way."""

    def __init__(self, head: nn.Module, *, chunk: int, low: np.ndarray, high: np.ndarray, z: str = "step",
                 execute: int | None = None, seed: int | None = None, name: str = "", device: str = "cpu",
                 obs_shape: Sequence[int] | None = None, env_kwargs: Mapping[str, Any] | None = None) -> None:
        if z not in Z_RULES:
            raise cvae.CVAEError(f"unknown z rule {z!r}; allowed: {', '.join(Z_RULES)}")
        self.device = torch.device(device)
        self.head, self.chunk, self.z, self.name = head.to(self.device).eval(), int(chunk), z, name
        default = self.chunk if z == "chunk" else 1
        self.execute = default if execute is None else int(execute)
        if not 1 <= self.execute <= self.chunk:
            raise cvae.CVAEError(f"execute must be in 1..{self.chunk} (the chunk length), got {execute!r}")
        self.low, self.high = np.asarray(low, dtype=np.float32), np.asarray(high, dtype=np.float32)
        self.obs_shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        self.env_kwargs = dict(env_kwargs or {})
        self.generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
        self.n = 0
        self.reset(1)

    def reset(self, n: int | None = None, seed: int | None = None) -> None:
        """Start new episodes (`n` parallel ones; default: as many as before); `seed` reseeds the noise."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self.n = self.n if n is None else int(n)
        self._plan: np.ndarray | None = None
        self._left = np.zeros(self.n, dtype=np.int64)
        self._noise = self._draw(self.n) if self.z == "episode" else None

    def _draw(self, n: int) -> torch.Tensor | None:
        return None if self.z == "zero" else self.head.noise(n, self.generator)

    def _check(self, obs: np.ndarray) -> tuple[np.ndarray, bool]:
        """The observations as a batch, and whether a single one was given; a clear error otherwise."""
        shape = self.obs_shape
        if shape is None:  # only the rank is known: a vector
            single = obs.ndim == 1
            if obs.ndim not in (1, 2):
                raise cvae.CVAEError(f"observations must be (obs_dim,) or (n, obs_dim), got shape {obs.shape}")
            return (obs[None] if single else obs), single
        if obs.shape == shape or obs.shape[1:] == shape:
            single = obs.shape == shape
            return (obs[None] if single else obs), single
        kind = "images (height, width, channels)" if len(shape) == 3 else "vectors"
        hint = ""
        if len(shape) == 3:
            hint = (f"; make the environment with {', '.join(f'{k}={v!r}' for k, v in self.env_kwargs.items())}"
                    if self.env_kwargs else "; make the environment with obs='image'")
        elif obs.ndim >= 3:
            hint = "; this policy was trained on vector observations (obs='vector')"
        raise cvae.CVAEError(f"observations must be {shape} or (n, {', '.join(map(str, shape))}): this policy takes "
                             f"{kind}; got shape {obs.shape}{hint}")

    @torch.no_grad()
    def act(self, obs: Any) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        batch, single = self._check(obs)
        if not np.isfinite(batch).all():
            raise cvae.CVAEError("observations contain NaN or infinite values")
        if len(batch) != self.n:
            self.reset(len(batch))
        need = np.nonzero(self._left == 0)[0]
        if len(need):
            noise = self._noise[need] if self._noise is not None else self._draw(len(need))
            x = torch.as_tensor(batch[need], device=self.device)
            chunk = self.head.predict(x, None if noise is None else noise.to(self.device)).cpu().numpy()
            if self._plan is None:
                self._plan = np.zeros((self.n, *chunk.shape[1:]), dtype=np.float32)
            self._plan[need] = chunk
            self._left[need] = self.execute
        step = self.execute - self._left
        actions = self._plan[np.arange(self.n), step]
        self._left -= 1
        actions = np.clip(actions, self.low, self.high)
        return actions[0] if single else actions


# ---------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------


def _adam(params: Any, lr: float) -> torch.optim.Optimizer:
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr)


def fit_head(head: nn.Module, data: cvae.DataBundle, *, epochs: int, lr: float = 1e-3, batch_size: int = 256,
             seed: int = 0, log: Any = None) -> dict[str, float]:
    """Train an MSE or mixture head on the bundle's train split; returns the last train and test loss."""
    torch.manual_seed(seed)
    opt = _adam(head.parameters(), lr)
    train_loss = float("nan")
    for epoch in range(epochs):
        head.train()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        total, count = 0.0, 0
        for conds, y in cvae.iterate_batches(data.train, batch_size, shuffle=True, generator=g):
            loss = head.loss(conds["obs"], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        train_loss = total / count
        if log and (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"  epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}")
    head.eval()
    with torch.no_grad():
        conds, y = next(cvae.iterate_batches(data.test, len(data.test)))
        test_loss = head.loss(conds["obs"], y).item()
    return {"train_loss": train_loss, "test_loss": test_loss}


def _cvae_config(demos_path: str, chunk: int, prior: str, epochs: int, seed: int,
                 prior_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(CVAE_CONFIG))
    cfg["seed"] = int(seed)
    cfg["device"] = "cpu"
    # the episodes held out by `seed`, as for the heads (0, the dataset's default, is left out: runs made before
    # the seed was passed on record no seed, and still resume)
    cfg["data"]["options"] = {"path": demos_path, "chunk": int(chunk), **({"seed": int(seed)} if seed else {})}
    cfg["model"]["prior"] = prior
    if prior == "standard":
        cfg["model"]["prior_options"] = {}
    cfg["model"]["prior_options"].update(prior_options or {})
    cfg["train"]["epochs"] = int(epochs)
    return cfg


def check_overrides(overrides: Sequence[str]) -> None:
    """`--set` overrides of the CVAE policies' config, checked (keys, values, component names) before any
    policy trains: a typo must not surface after the others have trained for minutes."""
    if overrides:
        config_mod.from_dict(_cvae_config("demos.npz", 4, "learned", 1, 0), overrides)


def train_policies(demos_path: str | Path, out: str | Path, *, policies: Sequence[str] | None = None, chunk: int = 4,
                   epochs: int = 150, head_epochs: int | None = None, seed: int = 0, resume: bool = False,
                   cvae_overrides: Sequence[str] = (), progress: bool = False, log: Any = print) -> dict[str, Any]:
    """Train the named policies (default: all of POLICIES) on one demonstrations file into `out`:
    `out/bc.json` describes the run, `out/<name>/` holds each policy (a cvae run directory for the
    CVAEs). With `resume`, finished policies are kept and interrupted CVAE runs continue; `progress`
    shows the CVAE trainer's progress bar."""
    from .demos import load_demos

    names = list(policies or POLICIES)
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise cvae.CVAEError(f"unknown policies {unknown}; known: {', '.join(POLICIES)}")
    if int(epochs) < 1:
        raise cvae.CVAEError(f"epochs must be >= 1, got {epochs!r}")
    check_overrides(cvae_overrides)
    demos_path = str(Path(demos_path).resolve())
    demos = load_demos(demos_path)
    out = Path(out)
    info_path = out / RUN_FILE
    if info_path.exists() and not resume:
        raise cvae.CVAEError(f"{out} already holds a behaviour-cloning run; pass --resume to continue it or choose "
                             f"another --out")
    out.mkdir(parents=True, exist_ok=True)
    info = {"format": "cvae-bc-run", "demos": demos_path, "env": demos.env, "env_id": demos.env_id,
            "chunk": int(chunk), "obs_shape": list(demos.observations.shape[1:]),
            "obs_dim": int(math.prod(demos.observations.shape[1:])), "act_dim": int(demos.actions.shape[1]),
            "env_kwargs": demos.env_kwargs,
            "action_low": np.asarray(demos.action_low if demos.action_low is not None else demos.actions.min(0)).tolist(),
            "action_high": np.asarray(demos.action_high if demos.action_high is not None else demos.actions.max(0)).tolist(),
            "mode_names": demos.mode_names,
            "mode_probs": None if demos.mode_probs is None else np.asarray(demos.mode_probs).tolist(),
            "demo_modes": np.bincount(demos.modes[demos.modes >= 0],
                                                                      minlength=len(demos.mode_names)).tolist(),
            "policies": {}}
    if info_path.exists():
        old = run_info(out)
        if old["chunk"] != info["chunk"] or old["demos"] != info["demos"]:
            raise cvae.CVAEError(f"{out} was trained on {old['demos']} with chunk {old['chunk']}; a resume must use "
                                 f"the same demonstrations and chunk")
        info["policies"] = old["policies"]
    # the heads' data as the CVAEs see it: the same episodes held out, and the same validation split if any
    bundle = cvae.load_data(config_mod.from_dict(_cvae_config(demos_path, chunk, "learned", epochs, seed),
                                                cvae_overrides))
    head_epochs = int(head_epochs or epochs)
    results: dict[str, Any] = {}
    for name in names:
        settings = POLICIES[name]
        where = out / name
        log(f"training {name} ({settings['kind']}) -> {where}")
        if settings["kind"] == "cvae":
            cfg = _cvae_config(demos_path, chunk, settings["prior"], epochs, seed, settings.get("prior_options"))
            cfg["train"]["progress"] = bool(progress)
            again = resume and (where / "checkpoints").is_dir() and any((where / "checkpoints").iterdir())
            metrics = cvae.train(cfg, out=where, resume=again, overrides=list(cvae_overrides))
            results[name] = {k: metrics[k] for k in ("test_elbo", "test_rec", "test_kl", "val_elbo", "val_rec", "val_kl",
                                                      "active_units") if k in metrics}
            info["policies"][name] = {**settings}
        else:
            model_path = where / "model.pt"
            if resume and model_path.exists():
                log(f"  {name} is already trained; kept")
                continue
            torch.manual_seed(seed)  # the head's initial weights, whatever ran before in this process
            head = _build_head(settings, _obs_shape(info), (int(chunk), info["act_dim"]))
            results[name] = fit_head(head, bundle, epochs=head_epochs, seed=seed, log=log)
            where.mkdir(parents=True, exist_ok=True)
            tmp = model_path.with_suffix(".tmp")
            torch.save({"format": "cvae-bc-policy", "settings": dict(settings), "state": head.state_dict()}, tmp)
            tmp.replace(model_path)
            info["policies"][name] = {**settings}
        _write_json(info_path, info)
    _write_json(info_path, info)
    return results


def _obs_shape(info: Mapping[str, Any]) -> tuple[int, ...]:
    """The observation shape of a run (runs from before image observations record only obs_dim)."""
    return tuple(info.get("obs_shape") or [info["obs_dim"]])


def _build_head(settings: Mapping[str, Any], obs_shape: Sequence[int], chunk_shape: tuple[int, int]) -> nn.Module:
    if settings["kind"] == "mse":
        return MLPRegressor(obs_shape, chunk_shape)
    if settings["kind"] == "mdn":
        return MixtureDensity(obs_shape, chunk_shape, components=int(settings.get("components", 5)))
    raise cvae.CVAEError(f"unknown policy kind {settings['kind']!r}")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """The description (`bc.json`) of a run written by `cvae bc train`."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise cvae.CVAEError(f"{run_dir} is not a behaviour-cloning run (no {RUN_FILE}); create one with `cvae bc train`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise cvae.CVAEError(f"{path} is corrupt: {exc}") from None


def load_policy(run_dir: str | Path, name: str = "cvae_learned", *, z: str = "step", execute: int | None = None,
                seed: int | None = None, device: str = "cpu") -> Policy:
    """A trained policy of a `cvae bc train` run, ready for `act(obs)`; `z` picks the noise rule
    (see the table above), `seed` seeds the noise."""
    info = run_info(run_dir)
    if name not in info["policies"]:
        raise cvae.CVAEError(f"policy {name!r} is not in {run_dir}; it has {', '.join(info['policies']) or 'none'}")
    settings = info["policies"][name]
    where = Path(run_dir) / name
    if settings["kind"] == "cvae":
        head: nn.Module = _CVAEPredictor(cvae.load_run(where, device="cpu").model)
    else:
        path = where / "model.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise cvae.CVAEError(f"{path} does not exist; train the policy with `cvae bc train`") from None
        except Exception as exc:  # torch raises many types for bad files
            raise cvae.CVAEError(f"{path} is corrupt or not a policy file ({type(exc).__name__})") from None
        head = _build_head(settings, _obs_shape(info), (info["chunk"], info["act_dim"]))
        try:
            head.load_state_dict(state["state"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise cvae.CVAEError(f"{path} does not fit policy {name!r}: {str(exc).splitlines()[0]}") from None
    return Policy(head, chunk=info["chunk"], low=np.array(info["action_low"]), high=np.array(info["action_high"]),
                  z=z, execute=execute, seed=seed, name=name, device=device, obs_shape=_obs_shape(info),
                  env_kwargs=info.get("env_kwargs"))
