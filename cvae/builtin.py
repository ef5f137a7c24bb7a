"""The engine's own plugin: generic building blocks every user needs, registered through the same
hooks (and the same entry-point group) as any third-party plugin."""

from __future__ import annotations

from . import convnets, fcn, latent_maps, likelihoods, nets, priors, schedules, spatial_prior
from .plugins import hookimpl
from .registry import ArchitectureSpec, LikelihoodSpec, MetricSpec, PriorSpec, ScheduleSpec


@hookimpl
def cvae_likelihoods() -> list[LikelihoodSpec]:
    return [
        LikelihoodSpec("bernoulli", likelihoods.Bernoulli, "independent Bernoulli per element; targets in [0, 1]"),
        LikelihoodSpec("gaussian", likelihoods.GaussianFixed, "Gaussian with a fixed sigma (option sigma)"),
        LikelihoodSpec("gaussian_learned", likelihoods.GaussianLearned, "Gaussian with a learned, soft-clamped sigma per element"),
        LikelihoodSpec("categorical", likelihoods.Categorical, "softmax over every discrete value (256 for 8-bit images)"),
        LikelihoodSpec("discretized_logistic", likelihoods.DiscretizedLogistic, "logistic integrated over each value's bin"),
        LikelihoodSpec("discretized_logistic_mixture", likelihoods.DiscretizedLogisticMixture,
                       "mixture of discretized logistics (option components)"),
    ]


@hookimpl
def cvae_priors() -> list[PriorSpec]:
    return [
        PriorSpec("standard", priors.StandardNormalPrior, "fixed N(0, I)"),
        PriorSpec("learned", priors.LearnedGaussianPrior, "Gaussian p(z | x) from an MLP over the condition features"),
        PriorSpec("mixture", priors.MixturePrior, "mixture of Gaussians p(z | x) (option components); KL by sampling"),
        PriorSpec("fitted_mixture", priors.FittedMixturePrior, "mixture of Gaussians per condition, fitted after training "
                  "to the aggregate posterior by `cvae fit-prior`"),
        PriorSpec("pixelcnn", spatial_prior.PixelCNNPrior, "autoregressive prior over latent maps (architecture "
                  "'fcn'): masked convolutions, Gaussians per position; KL by sampling"),
    ]


@hookimpl
def cvae_architectures() -> list[ArchitectureSpec]:
    return [ArchitectureSpec("mlp", nets.build_mlp, "fully connected encoder and decoder for targets of any shape"),
            ArchitectureSpec("conv", convnets.build_conv, "convolutional encoder and decoder for images of any size"),
            ArchitectureSpec("fcn", fcn.build_fcn, "fully-convolutional encoder and decoder: latent maps, "
                             "samples at other image sizes")]


@hookimpl
def cvae_metrics() -> list[MetricSpec]:
    return [MetricSpec("latent_maps", latent_maps.make_latent_map_metric,
                       "latent maps: correlation of neighbouring positions, posterior means and prior draws")]


@hookimpl
def cvae_schedules() -> list[ScheduleSpec]:
    return [
        ScheduleSpec("constant", schedules.Constant, "beta throughout"),
        ScheduleSpec("linear", schedules.LinearWarmup, "beta rises linearly over warmup_steps"),
        ScheduleSpec("cyclical", schedules.Cyclical, "repeated linear warm-ups every cycle_steps"),
        ScheduleSpec("kl_target", schedules.KLTarget, "PI controller on beta that holds the KL at target_kl nats"),
    ]
