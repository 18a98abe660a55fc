"""(d) Classifier-free guidance on the class-conditional model: where should the jump's mean come from?

For CFG w and every save-mode hand-off: the unconditional data Gaussian (what a moments file knows),
the class Gaussian μ_w = μ_u + w(μ_c − μ_u) (an oracle a text-to-image host does not have), the mean
read off the model's first guided call (one extra call; what the hosts do), the same with moments
read off the model itself (no image set at all), and with the covariance read off the guided model for
each prompt (class) as well. Paired to the plain guided run, beside its own discretisation error.
"""

from __future__ import annotations

import torch

from ..moments import estimate_moments_from_model
from ..reference import GuidedDenoiser
from .quality import Run, Variant, class_moments, evaluate, sample_by_class, sample_run, SAVE_FLOOR, STEPS
from ..demo import make_sigmas

GUIDANCE_SCALES = (1.0, 3.0, 5.0, 7.0)
GUIDANCE_RUNS = (("heun", "edm"), ("euler", "sd"), ("dpmpp_2m", "sd"))
VARIANTS = (Variant("data", "data"), Variant("class", "data"), Variant("data", "model"), Variant("model", "model"),
            Variant("prompt", "model"))


def run_guidance(ref, data, classifier, real_stats, noise, opts, model_moments, log) -> list[dict]:
    sd, classes = ref.sigma_data, ref.model.cfg.num_classes
    labels = torch.arange(len(noise)) % classes
    class_means = torch.stack([data.images[data.labels == c].double().mean(0) for c in range(classes)])
    cond = {"class_labels": labels}
    rows = []
    for w in opts.guidance_scales:
        guided = ref.model if w == 1.0 else GuidedDenoiser(ref.model, w)
        per_prompt = {}     # the covariance the guided model has for each class, read off it (7 calls each)
        for sampler, schedule in opts.guidance_runs:
            steps = STEPS[sampler]
            plain = Run(sampler, schedule, steps)
            base, calls, sec, land = sample_run(plain, guided, noise, sd, None, cond)
            fine, *_ = sample_run(plain, guided, noise, sd, None, cond, steps=2 * steps)
            m = evaluate(base, base, classifier, real_stats, opts.sets, labels, fine=fine)
            head = {"cfg": w, "sampler": sampler, "schedule": schedule, "steps": steps}
            rows.append({**head, "variant": "plain", "mode": "plain", "handoff": "", "calls": calls, "seconds": sec,
                         "handoff_sigma_data": land, **m})
            sigmas = make_sigmas(schedule, steps, sd)
            for k in range(1, steps if opts.max_skip is None else min(steps, opts.max_skip + 1)):
                if float(sigmas[k]) < SAVE_FLOOR * sd:
                    break
                for variant in opts.guidance_variants:
                    run = Run(sampler, schedule, steps, "save", _steps(k), variant)
                    if variant.moments == "class":
                        x, calls, sec, land = sample_by_class(run, guided, noise, labels, sd,
                                                              lambda c: class_moments(ref.moments, class_means[c], w))
                    elif variant.moments == "prompt":
                        if not per_prompt:
                            per_prompt.update({c: estimate_moments_from_model(
                                guided, ref.shape, extra_args={"class_labels": torch.tensor([c])})
                                for c in range(classes)})
                        x, calls, sec, land = sample_by_class(run, guided, noise, labels, sd, per_prompt.__getitem__)
                    else:
                        moments = ref.moments if variant.moments == "data" else model_moments
                        x, calls, sec, land = sample_run(run, guided, noise, sd, moments, cond)
                    m = evaluate(x, base, classifier, real_stats, opts.sets, labels)
                    rows.append({**head, "variant": variant.label, "mode": "save", "handoff": f"steps:{k}",
                                 "calls": calls, "seconds": sec, "handoff_sigma_data": land, **m})
                    log(f"[guidance w={w:g}] {sampler} {schedule} k={k} {variant.label:36s} calls {calls:2d} "
                        f"acc {sum(m['acc']) / len(m['acc']):.3f} RMSE {sum(m['rmse']) / len(m['rmse']):.4f}")
    return rows


def _steps(k):
    from ..scheduler import Handoff

    return Handoff("steps", k)
