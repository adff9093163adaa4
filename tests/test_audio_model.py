"""DiffWave network: shapes, receptive field, presets, fast schedule, and equivalence with the reference package."""
import math

import numpy as np
import pytest
import torch

from diffsuite.modalities.audio.diffwave import PRESETS, build_diffwave, count_parameters, step_sinusoid
from diffsuite.modalities.audio.task import fast_schedule

torch.set_num_threads(1)


def test_shapes_conditional_and_unconditional():
    net = build_diffwave("tiny", 4, 8, 2, n_mels=16, hop_length=64, T=50)
    x, mel = torch.randn(3, 1, 5 * 64), torch.randn(3, 16, 5)
    assert net(x, torch.tensor([0.0, 2.5, 49.0]), mel).shape == x.shape
    unc = build_diffwave("tiny", 4, 8, 2, n_mels=None, T=50)
    assert unc(torch.randn(2, 1, 1000), torch.tensor([1.0, 3.0]), None).shape == (2, 1, 1000)
    with pytest.raises(ValueError, match="frames"):
        net(x, torch.zeros(3), torch.randn(3, 16, 4))
    with pytest.raises(ValueError, match="n_mels=16"):
        net(x, torch.zeros(3), torch.randn(3, 20, 5))
    with pytest.raises(ValueError, match="unconditional"):
        unc(torch.randn(2, 1, 1000), torch.zeros(2), torch.randn(2, 80, 4))


def test_mel_upsampler_hop_not_hard_coded():
    with pytest.raises(ValueError, match="hop_length=75"):
        build_diffwave("tiny", 2, 4, 2, n_mels=8, hop_length=75)
    for hop in (64, 128, 256, 300):
        net = build_diffwave("tiny", 2, 4, 2, n_mels=8, hop_length=hop)
        assert net(torch.randn(1, 1, 3 * hop), torch.zeros(1), torch.randn(1, 8, 3)).shape == (1, 1, 3 * hop)



def test_mel_upsampler_starts_as_linear_interpolation():
    """upsampler_init='interp': each mel bin is upsampled on its own, a constant stays constant and a ramp stays a
    ramp (away from the edges); 'default' is PyTorch's random initialisation; an unknown name is an error."""
    from diffsuite.modalities.audio.diffwave import MelUpsampler
    for hop in (64, 256, 300):
        up = MelUpsampler(hop)
        level = torch.rand(1, 8, 1) + 0.5
        flat = up(level.expand(1, 8, 6))
        assert torch.allclose(flat[..., hop:-hop], level.expand(1, 8, 6 * hop)[..., hop:-hop], atol=1e-5)
        ramp = up(torch.arange(1.0, 7.0).expand(1, 8, 6))[0, 0, hop:-hop]
        assert torch.allclose(ramp.diff(), torch.full_like(ramp.diff(), 1 / hop), atol=1e-4)
    with torch.no_grad():
        mel = level.expand(1, 8, 6)
        assert not torch.allclose(MelUpsampler(256, "default")(mel), MelUpsampler(256, "interp")(mel))
    with pytest.raises(ValueError, match="upsampler_init"):
        MelUpsampler(256, "zeros")

def test_receptive_field_matches_gradient_support():
    net = build_diffwave("tiny", 6, 8, 3, n_mels=None)  # dilations 1,2,4,1,2,4 -> 1 + 2*14 = 29
    assert net.receptive_field == 29
    torch.manual_seed(0)
    for p in net.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(1, 1, 101, requires_grad=True)
    net(x, torch.tensor([3.0]))[0, 0, 50].backward()
    support = (x.grad[0, 0].abs() > 0).nonzero().flatten()
    assert support.min().item() == 50 - 14 and support.max().item() == 50 + 14


def test_base_parameter_count_near_reference():
    n = count_parameters(build_diffwave("base"))
    assert abs(n - 2.62e6) / 2.62e6 < 0.01, n
    assert PRESETS["base"]["T"] == 50 and PRESETS["large"]["residual_channels"] == 128
    unc = build_diffwave("sc09-unconditional", n_mels=None)
    assert len(unc.layers) == 36 and unc.input_proj.out_channels == 256 and max(unc.dilations) == 2 ** 11


def test_output_projection_zero_initialised():
    net = build_diffwave("tiny", 3, 8, 3, n_mels=8, hop_length=16)
    assert torch.count_nonzero(net.output_proj.weight) == 0
    out = net(torch.randn(2, 1, 32), torch.ones(2), torch.randn(2, 8, 2))
    assert torch.all(out == net.output_proj.bias)  # only the bias remains, as in the reference


def test_step_sinusoid_direct_at_integers_and_fractional():
    t = torch.tensor([0.0, 1.0, 7.0, 7.5])
    e = step_sinusoid(t)
    assert e.shape == (4, 128)
    table = torch.arange(8).unsqueeze(1) * 10.0 ** (torch.arange(64).unsqueeze(0) * 4.0 / 63.0)  # float32, as reference
    ref = torch.cat([torch.sin(table), torch.cos(table)], dim=1)
    assert torch.allclose(e[:3], ref[[0, 1, 7]], atol=1e-6)
    assert not torch.allclose(e[3], e[2])


def test_fast_schedule_matches_reference_alignment():
    """The base fast schedule: 6 inference alpha_bars aligned to fractional training steps (reference inference.py)."""
    train = np.linspace(1e-4, 0.05, 50)
    ts, ab = fast_schedule(train, PRESETS["base"]["fast_betas"])
    gamma = np.cumprod(1 - np.array(PRESETS["base"]["fast_betas"]))
    np.testing.assert_allclose(ab.numpy(), gamma[::-1])
    ab_train = np.cumprod(1 - train)
    assert ts[-1] == 0.0 and torch.all(ts[:-1] > ts[1:])
    for t, g in zip(ts.numpy(), ab.numpy()):  # sqrt(alpha_bar) is linear in t between training steps
        lo = int(math.floor(t))
        hi = min(lo + 1, 49)
        s = np.sqrt(ab_train[lo]) + (t - lo) * (np.sqrt(ab_train[hi]) - np.sqrt(ab_train[lo]))
        assert abs(s - np.sqrt(g)) < 1e-9


def _reference():
    ref_model = pytest.importorskip("diffwave.model")
    from diffwave.params import AttrDict, params
    return ref_model.DiffWave, AttrDict(dict(params))


def test_converter_identical_outputs():
    RefDiffWave, params = _reference()
    from diffsuite.modalities.audio.convert import load_reference_into
    torch.manual_seed(0)
    ref = RefDiffWave(params).eval()
    for p in ref.parameters():  # random, non-zero weights everywhere (the reference zero-inits the output)
        p.data.normal_(0, 0.05)
    ours = build_diffwave("base", step_embedding="lerp").eval()
    load_reference_into(ours, ref.state_dict())
    x, mel = torch.randn(2, 1, 256 * 6), torch.rand(2, 80, 6)
    with torch.no_grad():
        a = ref(x[:, 0], mel, torch.tensor([3, 49]))
        b = ours(x, torch.tensor([3.0, 49.0]), mel)
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()
        a = ref(x[:1, 0], mel[:1], torch.tensor([12.37]))  # the reference's lerp embedding (batch of one)
        b = ours(x[:1], torch.tensor([12.37]), mel[:1])
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), (a - b).abs().max()
    direct = build_diffwave("base", step_embedding="sinusoid").eval()
    direct.load_state_dict(ours.state_dict())
    with torch.no_grad():  # the direct sinusoid equals the table exactly at integer steps
        assert torch.allclose(direct(x, torch.tensor([3.0, 49.0]), mel), ref(x[:, 0], mel, torch.tensor([3, 49])),
                              atol=1e-6, rtol=1e-5)


def test_converter_rejects_unknown_key():
    from diffsuite.modalities.audio.convert import convert_reference_state_dict
    with pytest.raises(KeyError, match="bogus"):
        convert_reference_state_dict({"bogus.weight": torch.zeros(1)})


def test_fast_synthesis_matches_reference_sampling_loop():
    """Our 6-step fast synthesis through core `sample` equals the reference inference loop (without its clamp)."""
    RefDiffWave, params = _reference()
    from diffsuite.core.denoiser import Denoiser
    from diffsuite.core.schedules import make_schedule
    from diffsuite.modalities.audio.convert import load_reference_into
    from diffsuite.modalities.audio.task import synthesize
    params.update(residual_layers=4, residual_channels=8, dilation_cycle_length=2)
    torch.manual_seed(0)
    ref = RefDiffWave(params).eval()
    for p in ref.parameters():
        p.data.normal_(0, 0.1)
    ours = build_diffwave("base", 4, 8, 2, step_embedding="lerp").eval()
    load_reference_into(ours, ref.state_dict())
    den = Denoiser(ours, make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05))
    mel = torch.rand(1, 80, 4)
    fb = PRESETS["base"]["fast_betas"]
    x = synthesize(den, 1024, mel, "fast", generator=torch.Generator().manual_seed(3), fast_betas=fb)
    # the reference loop (diffwave/inference.py), same noise order: x_T, then one draw per non-final step
    ts, _ = fast_schedule(np.linspace(1e-4, 0.05, 50), fb)
    T = ts.numpy()[::-1]
    beta = np.array(fb)
    alpha, ab = 1 - beta, np.cumprod(1 - beta)
    g = torch.Generator().manual_seed(3)
    audio = torch.randn(1, 1024, generator=g)
    with torch.no_grad():
        for n in range(5, -1, -1):
            eps = ref(audio, mel, torch.tensor([T[n]], dtype=torch.float32)).squeeze(1)
            audio = (audio - beta[n] / (1 - ab[n]) ** 0.5 * eps) / alpha[n] ** 0.5
            if n > 0:
                audio = audio + ((1 - ab[n - 1]) / (1 - ab[n]) * beta[n]) ** 0.5 * torch.randn(1, 1024, generator=g)
    assert torch.allclose(x[:, 0], audio, atol=1e-4), (x[:, 0] - audio).abs().max()


def _random_tiny_vocoder():
    """A tiny DiffWave with random (non-zero-initialised) weights on DiffWave's T=50 schedule, and its denoiser."""
    from diffsuite.core.denoiser import Denoiser
    from diffsuite.core.schedules import make_schedule
    torch.manual_seed(0)
    net = build_diffwave("tiny", hop_length=16).eval()
    for q in net.parameters():
        q.data.normal_(0, 0.05)
    return net, Denoiser(net, make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05))


def test_condition_cache_bit_identical_and_reused():
    """Sampling inside condition_cache gives the same waveform bit for bit, computing the mel terms once."""
    from diffsuite.modalities.audio.task import _synthesize, synthesize
    net, den = _random_tiny_vocoder()
    mel = torch.randn(2, 80, 6)
    calls = []
    net.mel_upsampler.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        plain = _synthesize(den, 96, mel, "ddpm", 10, torch.Generator().manual_seed(3), None, 1, False, None)
        n_plain = len(calls)
        cached = synthesize(den, 96, mel, "ddpm", 10, torch.Generator().manual_seed(3))
    assert n_plain == 10 and len(calls) == 11          # once per step without the cache, once in all with it
    assert torch.equal(plain, cached)
    with torch.no_grad(), net.condition_cache(max_mb=0.0):  # over budget: only the upsampled mel is kept
        x, t = torch.randn(2, 1, 96), torch.full((2,), 7.0)
        assert torch.equal(net(x, t, mel), net(x, t, mel)) and net._cache["terms"] is None
        assert not torch.equal(net(x, t, mel + 1), net(x, t, mel))  # a new condition is never served stale terms
    assert net._cache is None
    net.train()
    with net.condition_cache():  # with gradients on the cache is bypassed, so training is unaffected
        out = net(x, t, mel)
        out.sum().backward()
    assert net.mel_upsampler.conv1.weight.grad is not None


def test_synthesize_passes_spacing_to_core_sampler():
    """`spacing` reaches the core sampler; audio DDIM defaults to linspace (starts at t=T-1, leading does not);
    'fast' refuses a spacing."""
    from diffsuite.core.samplers import sample
    from diffsuite.modalities.audio.task import synthesize
    net, den = _random_tiny_vocoder()
    mel = torch.randn(1, 80, 6)
    seen = []
    net.register_forward_pre_hook(lambda m, a: seen.append(float(a[1][0])))
    with torch.no_grad():
        x = synthesize(den, 96, mel, "ddim", 6, torch.Generator().manual_seed(3))
        ref = sample(den, (1, 1, 96), "ddim", 6, generator=torch.Generator().manual_seed(3), cond=mel,
                     spacing="linspace")
        default_first = seen[0]
        seen.clear()
        lead = synthesize(den, 96, mel, "ddim", 6, torch.Generator().manual_seed(3), spacing="leading")
    assert torch.equal(x, ref)
    assert default_first == 49.0 and seen[0] == 40.0 and not torch.equal(x, lead)
    with pytest.raises(ValueError, match="spacing"):
        synthesize(den, 96, mel, "fast", generator=torch.Generator().manual_seed(3),
                   fast_betas=PRESETS["base"]["fast_betas"], spacing="trailing")


def test_default_step_embedding_interpolates_fractional_steps():
    """The default embeds a fractional step between its integer neighbours (the reference's lerp), and equals the
    direct sinusoid bit for bit at integer steps, so training (integer t only) is the same in both modes."""
    lerp = build_diffwave("tiny", hop_length=16).eval()
    assert lerp.step_embed.mode == "lerp"
    direct = build_diffwave("tiny", hop_length=16, step_embedding="sinusoid").eval()
    direct.load_state_dict(lerp.state_dict())
    table = step_sinusoid(torch.arange(50, dtype=torch.float32))
    from diffsuite.modalities.audio.diffwave import step_sinusoid_lerp
    e = step_sinusoid_lerp(torch.tensor([12.37, 43.0]), 50)
    assert torch.allclose(e[0], 0.63 * table[12] + 0.37 * table[13], atol=1e-6) and torch.equal(e[1], table[43])
    # the direct sinusoid at 12.37 is nowhere near its neighbours: its fastest components turn over ~10^4 per step
    assert (step_sinusoid(torch.tensor([12.37]))[0] - e[0]).abs().max() > 0.5
    x, mel, t = torch.randn(2, 1, 64), torch.rand(2, 80, 4), torch.tensor([3.0, 49.0])
    with torch.no_grad():
        assert torch.equal(lerp(x, t, mel), direct(x, t, mel))


def test_fast_synthesis_warns_on_direct_sinusoid():
    from diffsuite.core.denoiser import Denoiser
    from diffsuite.core.schedules import make_schedule
    from diffsuite.modalities.audio.task import synthesize
    sched = make_schedule("linear", 50, beta_start=1e-4, beta_end=0.05)
    fb, mel = PRESETS["base"]["fast_betas"], torch.rand(1, 80, 2)
    old = Denoiser(build_diffwave("tiny", hop_length=16, step_embedding="sinusoid").eval(), sched)
    with pytest.warns(UserWarning, match="direct sinusoid"):
        synthesize(old, 32, mel, "fast", generator=torch.Generator().manual_seed(0), fast_betas=fb)
    new = Denoiser(build_diffwave("tiny", hop_length=16).eval(), sched)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synthesize(new, 32, mel, "fast", generator=torch.Generator().manual_seed(0), fast_betas=fb)
