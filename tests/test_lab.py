"""The Diffusion lab on the tiny random model: what it shows is the seed's math and the app's
own sampling, not an illustration of them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from pipelines.images import fit
from pipelines.lab import DDPM_LINEAR, SD_SCALED_LINEAR, demo_image
from pipelines.requests import Limits, Sampling, Txt2ImgRequest
from ui.lab_plots import schedule_figure

SIZE = 64  # the tiny model's native size


@pytest.fixture(scope="module")
def lab(manager):
    return manager.lab()


def test_forward_process_at_t0_is_the_images_own_latent_decode(lab):
    image = demo_image(96)
    view = lab.forward(image, 0, seed=3)
    fitted = fit(image, SIZE, SIZE, "crop and resize")
    with torch.no_grad():
        expected = lab.decode(lab.encode(fitted))[0]
    assert (view.alpha_bar, view.signal, view.noise, view.snr) == (1.0, 1.0, 0.0, math.inf)
    assert np.array_equal(np.asarray(view.latent_decoded), np.asarray(expected))
    assert np.array_equal(np.asarray(view.pixel), np.asarray(fitted))


def test_forward_process_at_T_uses_the_models_last_alpha_bar(lab, manager):
    # A plain float: pytest.approx of a 0-d tensor iterates it, which pytest 9 refuses.
    last = float(DDPMScheduler.from_config(manager.lab().config).alphas_cumprod.double()[-1])
    view = lab.forward(None, lab.T, seed=3)
    assert view.t == lab.T == 1000
    assert view.signal == pytest.approx(math.sqrt(last), rel=1e-5)
    assert view.noise == pytest.approx(math.sqrt(1 - last), rel=1e-6)
    assert view.snr == pytest.approx(last / (1 - last), rel=1e-5)
    # x_t − √ᾱ_T x_0 is the noise part: N(0, 1 − ᾱ_T), 256 values (std error of the std ≈ 0.045)
    with torch.no_grad():
        z0 = lab.encode(fit(demo_image(SIZE), SIZE, SIZE, "crop and resize")).cpu()
    residual = (view.latent - view.signal * z0) / view.noise
    assert abs(residual.mean()) < 0.3 and abs(residual.std() - 1) < 0.25


def closed_form(config: dict) -> dict:
    """β_t, ᾱ_t, log SNR_t written out here in numpy, independent of pipelines/."""
    b0, b1, n = config["beta_start"], config["beta_end"], config["num_train_timesteps"]
    betas = np.linspace(b0, b1, n) if config["beta_schedule"] == "linear" else np.linspace(b0**0.5, b1**0.5, n) ** 2
    ac = np.cumprod(1 - betas)
    return {"betas": betas, "alphas_cumprod": ac, "log_snr": np.log(ac / (1 - ac))}


def test_schedules_plot_draws_the_closed_forms(lab):
    curves = lab.curves()
    figure = schedule_figure(curves)
    panels = figure.axes[:3]
    expected = {0: closed_form(DDPM_LINEAR), 2: closed_form(SD_SCALED_LINEAR)}
    for index, truth in expected.items():
        for panel, key in zip(panels, ("betas", "alphas_cumprod", "log_snr")):
            line = panel.lines[index]
            np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 1001))
            np.testing.assert_allclose(line.get_ydata(), truth[key], rtol=1e-9)
    # the model's own (dashed) line is what its scheduler trains and samples with
    own = DDPMScheduler.from_config(lab.config).alphas_cumprod.double().numpy()
    assert curves[-1].name.startswith("this model")
    np.testing.assert_allclose(panels[1].lines[-1].get_ydata(), own, rtol=1e-4)  # diffusers: float32 cumprod
    # the seed's point: scaled-linear keeps more signal at the end of the schedule than DDPM's linear
    assert curves[2].log_snr[-1] > curves[0].log_snr[-1] + 4


def test_trajectory_strip_has_a_frame_every_k_steps_and_eta0_is_the_apps_ddim(lab, manager):
    result = lab.trajectory("a red circle", steps=6, every=4, cfg_scale=5.0, seed=11)
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


def test_cfg_anatomy_guided_is_uncond_plus_s_times_the_difference(lab):
    s = 6.5
    result = lab.cfg_anatomy("a blue square", steps=5, step=2, scale=s, seed=4, scales=(1.0, 4.0))
    eps, x0 = result.eps, result.x0
    assert torch.equal(eps["guided"], eps["uncond"] + s * (eps["cond"] - eps["uncond"]))
    # x̂_0 is affine in ε, so the guided x̂_0 is the same extrapolation of the two x̂_0s
    torch.testing.assert_close(x0["guided"], x0["uncond"] + s * (x0["cond"] - x0["uncond"]), rtol=1e-5, atol=1e-4)
    assert not torch.equal(eps["cond"], eps["uncond"])  # the prompt does reach the UNet
    assert [scale for scale, _ in result.finals] == [1.0, 4.0]
    assert result.predictions_strip.width > 3 * SIZE and result.finals_strip.width > 2 * SIZE
    assert result.guidance_ratio > 0
