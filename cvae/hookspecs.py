"""Every hook a plugin can implement, grouped by purpose.

Registry hooks take no arguments and return a list of spec records (see `cvae.registry`); the
registry attributes each record to the plugin that returned it. Lifecycle hooks are called by the
trainer; their return values are ignored. Implement a hook with `@cvae.hookimpl` on a function of the
same name in a module listed under the `cvae` entry-point group.

The documentation test (`tests/test_hookspecs.py`) checks that every hook below has a docstring with
an example, and that `docs/hooks.md` lists exactly these hooks.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("cvae")

# ---------------------------------------------------------------------------------------------------
# Registry hooks: components by name
# ---------------------------------------------------------------------------------------------------


@hookspec
def cvae_conditions() -> list:
    """Register condition encoders: modules that turn a raw condition into a feature vector.

    Returns a list of `ConditionSpec`. The factory is called as `factory(info, **options)` with the
    dataset's `ConditionInfo` and returns an `nn.Module` with an `out_features` attribute and a
    `parse(text) -> Tensor` method used by `cvae sample --condition NAME=TEXT`.

    Example::

        @cvae.hookimpl
        def cvae_conditions():
            return [cvae.ConditionSpec("label", LabelEncoder, "class label, embedded or one-hot")]
    """


@hookspec
def cvae_datasets() -> list:
    """Register datasets.

    Returns a list of `DatasetSpec`. The factory is called as `factory(**options)` (options come from
    the config's `data.options` table) and returns a `cvae.DataBundle`: train and test splits whose
    items are `(conditions: dict[str, Tensor], y: Tensor)`, plus a `TargetInfo` and one
    `ConditionInfo` per condition.

    Example::

        @cvae.hookimpl
        def cvae_datasets():
            return [cvae.DatasetSpec("digits", load_digits, "8x8 handwritten digits, bundled")]
    """


@hookspec
def cvae_architectures() -> list:
    """Register encoder/decoder architectures.

    Returns a list of `ArchitectureSpec`. The factory is called as
    `factory(target=, cond_features=, latent_dim=, params_per_element=, **options)` and returns
    `(encoder, decoder)`: `encoder(y, h) -> (mu, logvar)` and `decoder(z, h) -> params` of shape
    `(batch, params_per_element, *target.shape)`, where `h` holds the condition features.

    Example::

        @cvae.hookimpl
        def cvae_architectures():
            return [cvae.ArchitectureSpec("mlp", build_mlp, "fully connected encoder and decoder")]
    """


@hookspec
def cvae_likelihoods() -> list:
    """Register likelihoods p(y | x, z) over targets.

    Returns a list of `LikelihoodSpec`; `factory(target, **options)` returns a `cvae.Likelihood`
    that declares `params_per_element` and gives `log_prob`, `sample` and `mean`.

    Example::

        @cvae.hookimpl
        def cvae_likelihoods():
            return [cvae.LikelihoodSpec("bernoulli", Bernoulli, "binary or [0, 1] targets")]
    """


@hookspec
def cvae_priors() -> list:
    """Register priors p(z | x).

    Returns a list of `PriorSpec`; `factory(cond_features=, latent_dim=, **options)` returns a
    `cvae.Prior` that gives `kl`, `sample` and `log_prob`. `sample(h, temperature=1.0)` should scale
    its noise by `temperature` (subclasses of the Gaussian `cvae.Prior` inherit that); a prior whose
    `sample` takes only `h` still works at temperature 1, and below 1 gets a clear error.

    Example::

        @cvae.hookimpl
        def cvae_priors():
            return [cvae.PriorSpec("standard", StandardNormalPrior, "fixed N(0, I)")]
    """


@hookspec
def cvae_schedules() -> list:
    """Register KL-weight (beta) schedules and controllers.

    Returns a list of `ScheduleSpec`; `factory(beta=, **options)` returns an object with
    `beta(step) -> float`, `observe(kl: float) -> None`, `state_dict()` and `load_state_dict()`.

    Example::

        @cvae.hookimpl
        def cvae_schedules():
            return [cvae.ScheduleSpec("linear", LinearWarmup, "beta rises from 0 over warmup_steps")]
    """


@hookspec
def cvae_metrics() -> list:
    """Register evaluation metrics used by `cvae eval`.

    Returns a list of `MetricSpec`; `factory()` returns `metric(context) -> dict[str, float] | None`,
    where `context` is a `cvae.evaluate.EvalContext` (model, data, device, seed, sample_mode,
    temperature, run_dir for caches, source_dir: another run whose caches may be reused, read only). Return None
    when the metric does not apply (for example, class accuracy on unlabelled data). A value may also
    be a list of floats (None where undefined), or a matrix as a list of such lists (None for an
    undefined row); `cvae eval` prints those whose name ends in `_by_class` or, for matrices,
    `_confusion`, and keeps every one in eval.json. A list of strings under `class_names` names the
    classes those lists and rows follow; `cvae eval` labels them with it.

    Example::

        @cvae.hookimpl
        def cvae_metrics():
            return [cvae.MetricSpec("class_accuracy", make_accuracy_metric, "classifier accuracy of samples")]
    """


@hookspec
def cvae_environments() -> list:
    """Register behaviour-cloning environments (gymnasium ids) with their scripted experts.

    Returns a list of `EnvironmentSpec` with `env_id` set to an id registered with gymnasium;
    `factory(**options)` returns the expert: a callable `expert(observation, info) -> action`.

    Example::

        @cvae.hookimpl
        def cvae_environments():
            return [cvae.EnvironmentSpec("obstacle", ObstacleExpert, "two routes", env_id="cvae/Obstacle-v0")]
    """


@hookspec
def cvae_benchmarks() -> list:
    """Register throughput benchmarks run by `python -m benchmarks`.

    Returns a list of `BenchmarkSpec`; `factory(**options)` returns `run(device) -> list[dict]`, one
    result row per measured variant.

    Example::

        @cvae.hookimpl
        def cvae_benchmarks():
            return [cvae.BenchmarkSpec("mlp_train", make_mlp_train_benchmark, "MLP CVAE training step")]
    """


@hookspec
def cvae_commands() -> list:
    """Register subcommands of the `cvae` command line (for example `cvae bc ...`).

    Returns a list of `CommandSpec`; `factory()` returns an object with `help` (one line),
    `add_arguments(parser)` (an argparse parser of its own) and `run(args) -> int` (the exit code).
    Raise `cvae.CVAEError` for bad input: the CLI prints it on one line and exits 2.

    Example::

        @cvae.hookimpl
        def cvae_commands():
            return [cvae.CommandSpec("bc", BehaviourCloningCommand, "behaviour cloning: collect, train, eval")]
    """


# ---------------------------------------------------------------------------------------------------
# Training lifecycle hooks: loggers and callbacks
# ---------------------------------------------------------------------------------------------------


@hookspec
def cvae_fit_start(trainer: Any) -> None:
    """Called once before the first training step (also when a run resumes).

    `trainer` is the `cvae.Trainer`: `trainer.model`, `trainer.config`, `trainer.run_dir`,
    `trainer.epoch` and `trainer.step` are available.

    Example::

        @cvae.hookimpl
        def cvae_fit_start(trainer):
            print("training", trainer.config["data"]["name"], "in", trainer.run_dir)
    """


@hookspec
def cvae_step_end(trainer: Any, step: int, losses: dict) -> None:
    """Called after every optimiser step; keep it cheap, it is on the hot path.

    `losses` maps "loss", "rec" and "kl" to 0-d tensors still on the device; calling `.item()`
    forces a device synchronisation, so only do it every few hundred steps.

    Example::

        @cvae.hookimpl
        def cvae_step_end(trainer, step, losses):
            if step % 500 == 0:
                print(step, losses["loss"].item())
    """


@hookspec
def cvae_epoch_end(trainer: Any, epoch: int, metrics: dict) -> None:
    """Called after every epoch with that epoch's metrics (the row appended to `metrics.jsonl`).

    `metrics` holds plain floats: "loss", "rec", "kl", "beta", "active_units" and the held-out split's
    "test_elbo", "test_rec", "test_kl" (named "val_elbo", "val_rec", "val_kl" when the run holds out a
    validation split, `data.validation`, and the test split is left to the evaluation)...

    Example::

        @cvae.hookimpl
        def cvae_epoch_end(trainer, epoch, metrics):
            if metrics["kl"] < 0.1:
                print("warning: the KL is collapsing")
    """


@hookspec
def cvae_fit_end(trainer: Any, metrics: dict) -> None:
    """Called once when training finishes normally, with the last epoch's metrics, and under `eval`
    what eval.json holds when the evaluation at the end ran. Under `train.keep_best`, once an epoch was kept,
    `trainer.model` holds its weights by then (the pictures and the evaluation are of it), and `metrics`
    adds `best_epoch`, `best_step` and `best_val_elbo`. Under torchrun only rank 0 evaluates: the other
    ranks see the last row alone.

    Example::

        @cvae.hookimpl
        def cvae_fit_end(trainer, metrics):
            print("final held-out ELBO", metrics.get("val_elbo", metrics.get("test_elbo")))
    """


@hookspec
def cvae_fit_error(trainer: Any, error: BaseException) -> None:
    """Called when training stops on an error or an interrupt, after the last good state is saved.

    Example::

        @cvae.hookimpl
        def cvae_fit_error(trainer, error):
            print("training stopped:", error)
    """
