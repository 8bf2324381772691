"""The Diffusion lab on the tiny random model, run as the UI runs it (lab requests through
manager.run / stream with a Job): what it shows is the seed's math and the app's own sampling,
not an illustration of them; it reports every step and stops when its job is cancelled."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from pipelines.core.errors import GenerationError, RequestError
from pipelines.core.images import fit
from pipelines.core.jobs import Job, StepInfo
from pipelines.lab import DDPM_LINEAR, SD_SCALED_LINEAR, LabInterrupted, demo_image, to_image, to_tensor
from pipelines.core.lab_requests import LabCfgRequest, LabForwardRequest, LabSchedulesRequest, LabTrajectoryRequest
from pipelines.manager import PipelineManager
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
from ui.lab_plots import schedule_figure

SIZE = 64  # the tiny model's native size


def encode(manager, image):
    """The app's own VAE encode (scaled posterior mean) of a PIL image, on the shared VAE."""
    from pipelines.diffusion_math import vae_encode

    vae = manager.pipeline("txt2img").vae
    with torch.no_grad():
        return vae_encode(vae, to_tensor(image).to(vae.device, vae.dtype))


def decode(manager, latents):
    from pipelines.diffusion_math import vae_decode

    with torch.no_grad():
        return to_image(vae_decode(manager.pipeline("txt2img").vae, latents)[0])


def model_config(manager) -> dict:
    return dict(manager.pipeline("txt2img").scheduler.config)


def test_forward_process_at_t0_is_the_images_own_latent_decode(manager):
    image = demo_image(96)
    view = manager.run(LabForwardRequest(image, 0, 3))
    fitted = fit(image, SIZE, SIZE, "crop and resize")
    expected = decode(manager, encode(manager, fitted))
    assert (view.alpha_bar, view.signal, view.noise, view.snr) == (1.0, 1.0, 0.0, math.inf)
    assert np.array_equal(np.asarray(view.latent_decoded), np.asarray(expected))
    assert np.array_equal(np.asarray(view.pixel), np.asarray(fitted))


def test_forward_process_at_T_uses_the_models_last_alpha_bar(manager):
    # A plain float: pytest.approx of a 0-d tensor iterates it, which pytest 9 refuses.
    last = float(DDPMScheduler.from_config(model_config(manager)).alphas_cumprod.double()[-1])
    view = manager.run(LabForwardRequest(None, manager.train_steps, 3))
    assert view.t == view.T == manager.train_steps == 1000
    assert view.signal == pytest.approx(math.sqrt(last), rel=1e-5)
    assert view.noise == pytest.approx(math.sqrt(1 - last), rel=1e-6)
    assert view.snr == pytest.approx(last / (1 - last), rel=1e-5)
    # x_t − √ᾱ_T x_0 is the noise part: N(0, 1 − ᾱ_T), 256 values (std error of the std ≈ 0.045)
    z0 = encode(manager, fit(demo_image(SIZE), SIZE, SIZE, "crop and resize")).cpu()
    residual = (view.latent - view.signal * z0) / view.noise
    assert abs(residual.mean()) < 0.3 and abs(residual.std() - 1) < 0.25


def closed_form(config: dict) -> dict:
    """β_t, ᾱ_t, log SNR_t written out here in numpy, independent of pipelines/."""
    b0, b1, n = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    betas = np.linspace(b0, b1, n) if config["beta_schedule"] == "linear" else np.linspace(b0**0.5, b1**0.5, n) ** 2
    ac = np.cumprod(1 - betas)
    return {"betas": betas, "alphas_cumprod": ac, "log_snr": np.log(ac / (1 - ac))}


def test_schedules_plot_draws_the_closed_forms(manager):
    curves = manager.run(LabSchedulesRequest())
    figure = schedule_figure(curves)
    panels = figure.axes[:3]
    expected = {0: closed_form(DDPM_LINEAR), 2: closed_form(SD_SCALED_LINEAR)}
    for index, truth in expected.items():
        for panel, key in zip(panels, ("betas", "alphas_cumprod", "log_snr")):
            line = panel.lines[index]
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 1001))
            np.testing.assert_allclose(line.get_ydata(), truth[key], rtol=1e-9)
    # the model's own (dashed) line is what its scheduler trains and samples with
    own = DDPMScheduler.from_config(model_config(manager)).alphas_cumprod.double().numpy()
    assert curves[-1].name.startswith("this model")
    np.testing.assert_allclose(panels[1].lines[-1].get_ydata(), own, rtol=1e-4)  # diffusers: float32 cumprod
    # the seed's point: scaled-linear keeps more signal at the end of the schedule than DDPM's linear
    assert curves[2].log_snr[-1] > curves[0].log_snr[-1] + 4


def test_trajectory_strip_has_a_frame_every_k_steps_and_eta0_is_the_apps_ddim(manager):
    steps = []
    result = manager.run(LabTrajectoryRequest("a red circle", steps=6, every=4, cfg_scale=5.0, seed=11), on_step=steps.append)
    # one StepInfo per UNet step: 6 for η = 0 (batch 0), 6 for η = 1 (batch 1), progress rising to 1
    assert [(e.batch, e.step, e.total, e.batch_count) for e in steps] == [(b, k, 6, 2) for b in (0, 1) for k in range(1, 7)]
    assert steps[-1].fraction == 1
    frames = result.runs[0.0]
    assert [f.step for f in frames] == [4, 6] and [len(r) for r in result.runs.values()] == [2, 2]
    assert (frames[0].timestep, frames[-1].reached) == (int(frames[0].timestep), 0)
    # 2 columns × 4 rows (x_t and x̂_0 for η = 0 and η = 1) of 64 px, plus label margins
    assert result.strip.width - 2 * SIZE > 0 and result.strip.height - 4 * SIZE > 0
    assert (result.strip.width - 2 * SIZE) < 200 and (result.strip.height - 4 * SIZE) < 80
    # η = 0 written out here is exactly the app's DDIM sampler: same seed → same image
    request = Limits().normalize(Txt2ImgRequest(prompt="a red circle", width=SIZE, height=SIZE,
                                                sampling=Sampling(scheduler="DDIM", steps=6, cfg_scale=5.0, seed=11)))
    app_image = np.asarray(manager.run(request).images[0].image, dtype=np.int16)
    assert np.abs(np.asarray(frames[-1].x_t, dtype=np.int16) - app_image).max() <= 1
    # η = 1 draws fresh noise every step: same start, different end
    assert not np.array_equal(np.asarray(frames[-1].x_t), np.asarray(result.runs[1.0][-1].x_t))


def test_cfg_anatomy_guided_is_uncond_plus_s_times_the_difference(manager):
    s = 6.5
    result = manager.run(LabCfgRequest("a blue square", steps=5, step=3, scale=s, seed=4, scales=(1.0, 4.0)))
    assert result.step == 2  # the third step, 0-based
    eps, x0 = result.eps, result.x0
    assert torch.equal(eps["guided"], eps["uncond"] + s * (eps["cond"] - eps["uncond"]))
    # x̂_0 is affine in ε, so the guided x̂_0 is the same extrapolation of the two x̂_0s
    torch.testing.assert_close(x0["guided"], x0["uncond"] + s * (x0["cond"] - x0["uncond"]), rtol=1e-5, atol=1e-4)
    assert not torch.equal(eps["cond"], eps["uncond"])  # the prompt does reach the UNet
    assert [scale for scale, _ in result.finals] == [1.0, 4.0]
    assert result.predictions_strip.width > 3 * SIZE and result.finals_strip.width > 2 * SIZE
    assert result.guidance_ratio > 0


# ----------------------------------------------------------------- the job path
def test_a_cancelled_job_stops_a_lab_run_between_steps_and_the_device_is_free_again(manager):
    job, seen = Job(), []

    def on_step(event: StepInfo):
        seen.append(event.step)
        if event.step == 2:
            job.cancel()  # as Interrupt does, from another thread in the app

    with pytest.raises(LabInterrupted, match="Interrupted at step 2 of 40"):
        manager.run(LabTrajectoryRequest("a red circle", steps=40, every=10, seed=1), on_step=on_step, job=job)
    assert seen == [1, 2]  # not one UNet step more
    events = list(manager.stream(LabForwardRequest(None, 10, 0)))  # the lock was released
    assert len(events) == 1 and events[0].t == 10


def test_lab_requests_reject_what_cannot_be_meant():
    with pytest.raises(RequestError, match="Show every 9 steps is more than the 4 steps"):
        LabTrajectoryRequest(steps=4, every=9)
    with pytest.raises(RequestError, match="Inspect step must be between 1 and the 4 steps"):
        LabCfgRequest(steps=4, step=5)
    with pytest.raises(RequestError, match="Scales must be between 0 and 30"):
        LabCfgRequest(scales=(1.0, 31.0))
    with pytest.raises(RequestError, match="CFG scale must be a finite number"):
        LabTrajectoryRequest(cfg_scale=float("nan"))
    with pytest.raises(RequestError, match="t must be at least 0"):
        LabForwardRequest(t=-3)


def test_t_beyond_the_models_schedule_and_no_model_are_clear_errors(manager):
    with pytest.raises(RequestError, match="t must be between 0 and 1000, got 1001"):
        manager.run(LabForwardRequest(None, 1001))
    with pytest.raises(GenerationError, match="No model is loaded"):
        PipelineManager(device="cpu").run(LabSchedulesRequest())
