"""RePaint sampler on a tiny random SD UNet: the math of every step, the jump schedule, CFG,
strength, seeds and cancel. Real modules, no mocks; latents are 8×8 so each run is quick."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from pipelines.diffusion_math import prediction_to_eps_x0
from pipelines.repaint import jump_schedule, masked_content_latents, repaint
from tiny_sd import SD_SCHEDULER_CONFIG, tiny_pipeline, tiny_unet

CONFIG = dict(SD_SCHEDULER_CONFIG)


@pytest.fixture(scope="module")
def sd():
    # One thread: as fast for a UNet this small, and steadier on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipe = tiny_pipeline()
    cond, uncond = pipe.encode_prompt("a red circle", "cpu", 1, True, "")
    yield pipe.unet, cond, uncond
    torch.set_num_threads(threads)


def init_and_mask(seed: int = 0, batch: int = 1):
    g = torch.Generator().manual_seed(100 + seed)
    x0 = torch.randn(batch, 4, 8, 8, generator=g)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 3:7] = 1.0
    mask[..., 1, 1] = 0.5  # soft values are allowed
    return x0, mask


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def sd_alphas_cumprod_float64() -> torch.Tensor:
    """SD's training schedule from its definition: scaled-linear β_t = linspace(√β_1, √β_T)²."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def leading_timesteps(steps: int) -> list[int]:
    """SD 1.x respacing ("leading", steps_offset 1): 10 steps → 901, 801, …, 1."""
    return [i * (1000 // steps) + 1 for i in reversed(range(steps))]


class UNetCalls:
    """Every UNet forward: its batch size, input channels and timestep."""

    def __init__(self, unet):
        self.batches, self.channels, self.timesteps, self.inputs = [], [], [], []

        def hook(module, args, kwargs):
            self.batches.append(args[0].shape[0])
            self.channels.append(args[0].shape[1])
            self.timesteps.append(int(args[1]))
            self.inputs.append(args[0].clone())

        self.handle = unet.register_forward_pre_hook(hook, with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(sd, x0, mask, steps=4, guidance=5.0, eta=1.0, strength=1.0, r=1, j=1, seeds=(1,), **kw):
    unet, cond, uncond = sd
    return repaint(unet, CONFIG, x0, mask, cond, uncond if guidance > 1 else None, steps, guidance, eta, strength,
                   r, j, gens(*seeds), **kw)


# ----------------------------------------------------------------- the known region
def test_known_region_at_every_step_is_the_init_latent_forward_noised_with_that_steps_noise(sd):
    x0, mask = init_and_mask()
    seen, after = [], []
    out = run(sd, x0, mask, steps=5, r=2, j=2, on_known=lambda t, known, noise: seen.append((t, known, noise)),
              on_step=lambda done, total, x, denoised: after.append(x.clone()))
    abar = sd_alphas_cumprod_float64()
    ts = leading_timesteps(5)
    # Levels stepped *to*, along the jump path 0,1,2,1,0,1,2,3,4,3,2,3,4,5,4,5 (−1 = clean).
    assert [t for t, _, _ in seen] == [ts[1], ts[2], ts[1], ts[2], ts[3], ts[4], ts[3], ts[4], -1, -1]
    keep = (mask == 0).expand_as(x0)
    for (t, known, noise), x in zip(seen, after):
        a = 1.0 if t == -1 else float(abar[t])
        expected = a ** 0.5 * x0.double() + (1 - a) ** 0.5 * noise.double()  # q(x_t | x_0) with the same ε
        assert torch.allclose(known.double(), expected, atol=1e-5), t
        assert torch.equal(x[keep], known[keep])  # where m = 0 the latent *is* the known one
    assert torch.equal(out.latents[keep], x0[keep])  # at the clean end the known region is x_0 itself
    noises = torch.stack([n for _, _, n in seen])
    assert (noises[1:] != noises[:-1]).all()  # fresh ε at every step, not one pasted noise


# ----------------------------------------------------------------- r = 1 is plain blending
def plain_blending(unet, cond, uncond, x0, mask, steps, guidance, eta, seed) -> torch.Tensor:
    """Latent blending written out on its own: x_{t-1} = m·DDIM(x_t) + (1−m)·q(x_{t-1}|x_0)."""
    g = torch.Generator().manual_seed(seed)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    ts = leading_timesteps(steps)
    x = torch.randn(x0.shape, generator=g)
    for i, t in enumerate(ts):
        a_t = float(alphas_cumprod[t])
        a_s = float(alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        out = unet(torch.cat([x, x]), torch.tensor(t), encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
        e_u, e_c = out.chunk(2)
        eps = e_u + guidance * (e_c - e_u)
        x0_hat = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
        sigma = eta * ((1 - a_s) / (1 - a_t)) ** 0.5 * (1 - a_t / a_s) ** 0.5
        pred = a_s ** 0.5 * x0_hat + max(1 - a_s - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            pred = pred + sigma * torch.randn(x0.shape, generator=g)
        known = a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * torch.randn(x0.shape, generator=g)
        x = mask * pred + (1 - mask) * known
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_r1_j1_is_exactly_plain_latent_blending(sd, eta):
    x0, mask = init_and_mask()
    with torch.no_grad():
        expected = plain_blending(*sd, x0, mask, steps=6, guidance=5.0, eta=eta, seed=3)
    got = run(sd, x0, mask, steps=6, guidance=5.0, eta=eta, r=1, j=1, seeds=(3,)).latents
    assert torch.equal(got, expected)


def test_full_mask_with_eta_zero_is_diffusers_ddim(sd):
    """m = 1 everywhere: the sampler is DDIM itself (diffusers' own step, final ᾱ = 1)."""
    unet, cond, uncond = sd
    x0, _ = init_and_mask()
    # SD's real configs say clip_sample: false (latents are not bounded); tiny_sd's omits it.
    scheduler = DDIMScheduler.from_config({**CONFIG, "set_alpha_to_one": True, "clip_sample": False})
    scheduler.set_timesteps(5)
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            e_u, e_c = out.chunk(2)
            x = scheduler.step(e_u + 5.0 * (e_c - e_u), t, x, eta=0.0).prev_sample
    got = run(sd, x0, torch.ones(1, 1, 8, 8), steps=5, guidance=5.0, eta=0.0, seeds=(4,)).latents
    assert torch.allclose(got, x, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- resampling
def test_jump_schedule_descends_each_block_r_times():
    assert jump_schedule(5, 2, 2) == [0, 1, 2, 1, 0, 1, 2, 3, 4, 3, 2, 3, 4, 5, 4, 5]
    assert jump_schedule(3, 1, 2) == [0, 1, 2, 3]
    for n, r, j in ((10, 4, 3), (7, 3, 10), (1, 5, 1), (0, 3, 2)):
        path = jump_schedule(n, r, j)
        steps = [b - a for a, b in zip(path, path[1:])]
        assert set(steps) <= {1, -1} and path[0] == 0 and path[-1] == n
        assert steps.count(1) == r * n


def test_r_resamplings_run_r_times_the_unet_calls_over_the_jump_schedule(sd):
    x0, mask = init_and_mask()
    with UNetCalls(sd[0]) as calls:
        out = run(sd, x0, mask, steps=5, r=3, j=2)
    ts = leading_timesteps(5)
    assert calls.timesteps == [ts[0], ts[1]] * 3 + [ts[2], ts[3]] * 3 + [ts[4]] * 3  # last block is partial
    assert out.steps_done == out.total_steps == 15 and not out.stopped
    for r, j, strength, expected in ((2, 1, 1.0, 8), (4, 3, 1.0, 16), (2, 2, 0.5, 4)):
        with UNetCalls(sd[0]) as calls:
            run(sd, x0, mask, steps=4, r=r, j=j, strength=strength)
        assert len(calls.batches) == expected, (r, j, strength)


# ----------------------------------------------------------------- CFG, strength, seeds, cancel
def test_cfg_off_is_one_unet_pass_of_batch_one_per_step(sd):
    x0, mask = init_and_mask()
    with UNetCalls(sd[0]) as off:
        without = run(sd, x0, mask, steps=4, guidance=1.0)
    with UNetCalls(sd[0]) as on:
        with_cfg = run(sd, x0, mask, steps=4, guidance=5.0)
    assert off.batches == [1] * 4 and on.batches == [2] * 4
    assert not torch.equal(without.latents, with_cfg.latents)
    with pytest.raises(ValueError, match="negative"):
        repaint(sd[0], CONFIG, x0, mask, sd[1], None, 4, 5.0, 0.0, 1.0, 1, 1, gens(1))


def test_strength_half_starts_half_way_from_the_forward_noised_init(sd):
    x0, mask = init_and_mask()
    with UNetCalls(sd[0]) as calls:
        run(sd, x0, mask, steps=10, strength=0.5, guidance=1.0, seeds=(9,))
    ts = leading_timesteps(10)
    assert calls.timesteps == ts[5:]
    a = float(sd_alphas_cumprod_float64()[ts[5]])
    first_noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(calls.inputs[0], a ** 0.5 * x0 + (1 - a) ** 0.5 * first_noise, atol=1e-5)  # x ~ q(x_t|x_0)


def test_strength_one_starts_from_pure_noise_and_zero_returns_the_init(sd):
    x0, mask = init_and_mask()
    with UNetCalls(sd[0]) as calls:
        run(sd, x0, mask, steps=3, strength=1.0, guidance=1.0, seeds=(9,))
    assert torch.equal(calls.inputs[0], torch.randn(x0.shape, generator=torch.Generator().manual_seed(9)))
    out = run(sd, x0, mask, steps=3, strength=0.2, guidance=1.0)  # int(3 · 0.2) = 0 steps
    assert torch.equal(out.latents, x0) and out.total_steps == 0


def test_cancel_stops_within_one_step(sd):
    x0, mask = init_and_mask()
    reported = []
    for r in (1, 3):
        stop = []
        with UNetCalls(sd[0]) as calls:
            out = run(sd, x0, mask, steps=6, r=r, j=2,
                      on_step=lambda done, total, x, d: (reported.append((done, total)), done == 2 and stop.append(1)),
                      should_stop=lambda: bool(stop))
        assert len(calls.batches) == 2 and out.stopped and out.steps_done == 2
        assert out.denoised is not None and out.denoised.shape == x0.shape
    assert reported == [(1, 6), (2, 6), (1, 18), (2, 18)]


def test_same_seed_gives_identical_latents_and_image_k_follows_its_own_seed(sd):
    x0, mask = init_and_mask()
    a = run(sd, x0, mask, steps=4, r=2, j=2, seeds=(7,)).latents
    b = run(sd, x0, mask, steps=4, r=2, j=2, seeds=(7,)).latents
    c = run(sd, x0, mask, steps=4, r=2, j=2, seeds=(8,)).latents
    assert torch.equal(a, b) and not torch.equal(a, c)
    pair = run(sd, torch.cat([x0, x0]), mask, steps=4, r=2, j=2, seeds=(8, 7)).latents
    # Batched matmuls may round differently from single ones.
    assert torch.allclose(pair[1:], a, atol=1e-4) and torch.allclose(pair[:1], c, atol=1e-4)


# ----------------------------------------------------------------- masked content, other UNets
def test_latent_masked_content_changes_only_the_masked_latents():
    x0, mask = init_and_mask()
    hard = torch.zeros_like(mask)
    hard[..., 2:6, 3:7] = 1
    keep = (hard == 0).expand_as(x0)
    nothing = masked_content_latents(x0, hard, "latent nothing", gens(1))
    noise = masked_content_latents(x0, hard, "latent noise", gens(1))
    assert torch.equal(nothing[keep], x0[keep]) and (nothing[~keep] == 0).all()
    drawn = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise[keep], x0[keep]) and torch.equal(noise[~keep], drawn[~keep])
    assert masked_content_latents(x0, hard, "fill", gens(1)) is x0
    with pytest.raises(ValueError, match="latent nothing"):
        masked_content_latents(x0, hard, "blur", gens(1))


def test_a_nine_channel_unet_gets_the_extra_channels_on_every_call(sd):
    unet = tiny_unet(in_channels=9, seed=1)
    x0, mask = init_and_mask()
    extra = torch.cat([mask, x0 * (1 - mask)], dim=1)  # [mask, masked-image latent]
    with UNetCalls(unet) as calls:
        out = repaint(unet, CONFIG, x0, mask, sd[1], sd[2], 3, 5.0, 0.0, 1.0, 2, 1, gens(1), unet_extra_channels=extra)
    assert calls.channels == [9] * 6 and calls.batches == [2] * 6 and torch.isfinite(out.latents).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_gives_back_eps_and_x0(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps, a = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 4, generator=g), 0.3
    x = a ** 0.5 * x0 + (1 - a) ** 0.5 * eps
    output = {"epsilon": eps, "v_prediction": a ** 0.5 * eps - (1 - a) ** 0.5 * x0, "sample": x0}[kind]
    got_eps, got_x0 = prediction_to_eps_x0(output, x, a, kind)
    assert torch.allclose(got_eps, eps, atol=1e-5) and torch.allclose(got_x0, x0, atol=1e-5)
