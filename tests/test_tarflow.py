"""TarFlow behaviour the generic contract cannot see: cached sampling, causal structure, denoising."""

import copy

import pytest
import torch

from exactflow import Compose
from exactflow.distributions import Flow, StandardNormal
from exactflow.flows import describe, rebuild
from exactflow.flows import registry as flows
from exactflow.flows.tarflow import TarFlowModel, denoise
from exactflow.images import bits_per_dim
from exactflow.testing import randomize_
from exactflow.transforms.elementwise import ElementwiseAffine
from exactflow.transforms.tarflow import TarFlowBlock, patchify, unpatchify


def _block(**kw) -> TarFlowBlock:
    kw = {"shape": (1, 8, 8), "patch": 2, "channels": 16, "layers": 2, "heads": 2, **kw}
    return randomize_(TarFlowBlock(**kw)).eval()


def _rounding(dtype: torch.dtype, width: int, depth: int) -> float:
    """Relative rounding of a transformer pass: each layer's longest dot product (the MLP's, 4 * width terms)
    errs by at most that many eps relative to the magnitudes involved, once per layer in ``depth``."""
    return torch.finfo(dtype).eps * 4 * width * depth


def assert_close_to_reference(got: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """``got`` (any dtype) against a float64 ``ref``: relative ``rtol``, and the same fraction of the largest
    value as the absolute floor (entries near 0 carry the absolute error of the others)."""
    torch.testing.assert_close(got.double(), ref, rtol=rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("flip", [False, True])
def test_kv_cache_inverse_equals_recomputation(dtype, flip):
    reference = _block(flip=flip, context=3).double()  # 16 patches
    block = copy.deepcopy(reference).to(dtype)
    z = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    c = torch.randn(5, 3, dtype=torch.float64)
    with torch.no_grad():
        x_ref, l_ref = reference.inverse(z, c, use_cache=False)
        x_cache, l_cache = block.inverse(z.to(dtype), c.to(dtype), use_cache=True)
        x_full, l_full = block.inverse(z.to(dtype), c.to(dtype), use_cache=False)
        z_back, _ = block(x_cache, c.to(dtype))
    rtol = _rounding(dtype, width=16, depth=2)  # both ways are the same float64 map, each rounded in dtype
    for got, ref in ((x_cache, x_ref), (x_full, x_ref), (l_cache, l_ref), (l_full, l_ref), (z_back, z)):
        assert got.dtype == dtype
        assert_close_to_reference(got, ref, rtol)


def test_flow_samples_with_cache_equal_samples_without():
    flow = flows["TarFlow"](shape=(1, 8, 8), patch=2, channels=16, depth=2, layers_per_block=1, heads=2)
    randomize_(flow, 0.2)
    reference = copy.deepcopy(flow).double()
    z = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        x_ref, _ = reference.transform.inverse(z)
        x_cache, _ = flow.transform.inverse(z.float())
        blocks = [b for b in flow.transform.bijections if isinstance(b, TarFlowBlock)]
        h = z.float()
        for b in reversed(blocks):
            h, _ = b.inverse(h, use_cache=False)
        x_full, _ = flow.transform.bijections[0].inverse(h)
    rtol = _rounding(torch.float32, width=16, depth=2)  # 2 blocks of 1 layer; the logit's sigmoid only contracts
    assert_close_to_reference(x_cache, x_ref, rtol)
    assert_close_to_reference(x_full, x_ref, rtol)


@pytest.mark.parametrize("flip", [False, True])
def test_patch_i_depends_only_on_earlier_patches(flip):
    block = _block(shape=(1, 4, 4), flip=flip).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: patchify(block(v)[0], 2), x)  # (1, T, d, 1, 1, 4, 4)
    jac = patchify(jac.reshape(-1, 1, 4, 4), 2).reshape(4, 4, 4, 4)  # (out patch, out dim, in patch, in dim)
    order = [3, 2, 1, 0] if flip else [0, 1, 2, 3]
    for a, i in enumerate(order):
        for j in order[a + 1:]:
            assert jac[i, :, j].abs().max() == 0, f"patch {i} depends on later patch {j}"
        assert jac[i, :, i].abs().max() > 0


def test_patchify_round_trip_and_vectors():
    x = torch.randn(3, 2, 4, 6)
    assert torch.equal(unpatchify(patchify(x, 2), (2, 4, 6), 2), x)  # a permutation of the entries: exact
    block = _block(shape=None, features=6, patch=2)
    assert block.tokens == 3 and block.token_dim == 2
    v = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        v_back = block.inverse(block(v.float())[0])[0]
    assert_close_to_reference(v_back, v, 2 * _rounding(torch.float32, width=16, depth=2))  # there and back


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="patch"):
        TarFlowBlock(shape=(1, 6, 6), patch=4)
    with pytest.raises(ValueError, match="heads"):
        TarFlowBlock(features=4, channels=10, heads=4)
    with pytest.raises(ValueError, match="exactly one"):
        flows["TarFlow"](shape=(1, 4, 4), features=16)


def test_image_tarflow_gives_bits_per_dim():
    flow = flows["TarFlow"](shape=(1, 8, 8), patch=2, channels=16, depth=2, layers_per_block=1, heads=2)
    x = (torch.randint(0, 17, (6, 1, 8, 8)) + torch.rand(6, 1, 8, 8)) / 17
    bpd = bits_per_dim(flow.log_prob(x), (1, 8, 8), 17)
    assert bpd.shape == (6,) and torch.isfinite(bpd).all()


def test_denoise_is_tweedie_step_on_a_gaussian():
    affine = ElementwiseAffine(3)
    with torch.no_grad():
        affine.loc.copy_(torch.tensor([1.0, -2.0, 0.5]))
        affine.log_scale.copy_(torch.tensor([0.0, 0.5, -0.3]))
    flow = Flow(Compose(affine), StandardNormal(3))
    y = torch.randn(5, 3)
    sigma = 0.3
    loc, log_scale = affine.loc.detach().double(), affine.log_scale.detach().double()
    expected = y.double() - sigma**2 * (y.double() - loc) / torch.exp(2 * log_scale)
    # about 8 roundings (affine map, its log-det, the score's backward pass, the step), each of at most eps
    # relative to the magnitudes entering the subtraction y - loc
    eps = torch.finfo(torch.float32).eps
    scale = (y.abs() + loc.abs()).max().item()
    torch.testing.assert_close(denoise(flow, y, sigma).double(), expected, rtol=8 * eps, atol=8 * eps * scale)


def _noisy_vector_flow(noise: float = 0.1, **kw) -> TarFlowModel:
    kw = {"channels": 16, "depth": 2, "layers_per_block": 1, "heads": 2, "noise": noise, **kw}
    return randomize_(flows["TarFlow1d"](4, **kw), 0.2).double()


def test_noise_is_recorded_and_added_in_training_mode_only():
    flow = _noisy_vector_flow(0.1)
    assert flow.spec["kwargs"]["noise"] == 0.1 and rebuild(describe(flow)).noise == 0.1
    x = torch.randn(6, 4, dtype=torch.float64)
    flow.eval()
    clean = flow.log_prob(x)
    z, ladj = flow.transform(x)
    torch.testing.assert_close(clean, flow.base.log_prob(z) + ladj, rtol=0, atol=0)  # plain Flow maths
    flow.train()
    torch.manual_seed(1)
    noisy = flow.log_prob(x)
    torch.manual_seed(1)
    eps = torch.randn_like(x)
    torch.testing.assert_close(noisy, flow.eval().log_prob(x + 0.1 * eps))  # the same map at x + sigma eps
    assert not torch.allclose(noisy, clean)


def test_image_noise_is_added_after_the_logit():
    flow = randomize_(flows["TarFlow"]((1, 4, 4), patch=2, channels=8, depth=2, layers_per_block=1, heads=2,
                                       noise=0.05), 0.2).double().train()
    x = 0.05 + 0.9 * torch.rand(3, 1, 4, 4, dtype=torch.float64)
    torch.manual_seed(2)
    got = flow.log_prob(x)
    logit, *blocks = flow.transform.bijections
    y, ladj0 = logit(x)
    torch.manual_seed(2)
    z, ladj1 = Compose(*blocks)(y + 0.05 * torch.randn_like(y))
    torch.testing.assert_close(got, flow.base.log_prob(z) + ladj1 + ladj0)


def _fd_score(fn, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central differences of ``fn`` (summed over the batch: rows are independent) in every coordinate."""
    grad = torch.zeros_like(x)
    flat = grad.view(x.shape[0], -1)
    for i in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[:, i] = h
        e = e.view_as(x)
        flat[:, i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return grad


def test_denoise_is_a_score_step_checked_by_finite_differences():
    flow = _noisy_vector_flow(0.3, context=2).eval()
    x, c = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = x + 0.3**2 * _fd_score(lambda v: flow.log_prob(v, c), x)
    # central differences in float64 at h = 1e-5: truncation ~ h^2 f''' and rounding ~ eps |f| / h, both < 1e-8
    torch.testing.assert_close(flow.denoise(x, c), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(flow.denoise(x, c), denoise(flow, x, 0.3, c), rtol=0, atol=1e-12)  # no preprocessing


def test_image_denoise_steps_in_the_logit_space():
    flow = randomize_(flows["TarFlow"]((1, 4, 4), patch=2, channels=8, depth=2, layers_per_block=1, heads=2,
                                       noise=0.2), 0.2).double().eval()
    x = 0.1 + 0.8 * torch.rand(2, 1, 4, 4, dtype=torch.float64)
    logit, *blocks = flow.transform.bijections
    blocks = Compose(*blocks)

    def log_p_blocks(y: torch.Tensor) -> torch.Tensor:
        z, ladj = blocks(y)
        return flow.base.log_prob(z) + ladj

    with torch.no_grad():
        y = logit(x)[0]
        expected = logit.inverse(y + 0.2**2 * _fd_score(log_p_blocks, y))[0]
    torch.testing.assert_close(flow.denoise(x), expected, rtol=0, atol=1e-7)


def test_sample_denoises_by_default_when_trained_with_noise():
    flow = _noisy_vector_flow(0.2).eval()
    torch.manual_seed(3)
    raw = flow.sample(4, denoise=False)
    torch.manual_seed(3)
    cleaned = flow.sample(4)
    torch.testing.assert_close(cleaned, flow.denoise(raw), rtol=0, atol=1e-12)
    assert not torch.allclose(cleaned, raw)
    plain = _noisy_vector_flow(0.0).eval()
    torch.manual_seed(3)
    a = plain.sample(4)
    torch.manual_seed(3)
    torch.testing.assert_close(a, plain.sample(4, denoise=False), rtol=0, atol=0)


@pytest.mark.parametrize("segments", [1, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_jacobi_inverse_equals_kv_cache_inverse(flip, segments):
    block = _block(flip=flip, context=3)  # 16 patches, randomised: far from the identity
    z, c = torch.randn(5, 1, 8, 8), torch.randn(5, 3)
    with torch.no_grad():
        x_kv, l_kv = block.inverse(z, c)
        x_j, l_j, iterations = block.jacobi(z, c, segments=segments)
    assert iterations <= 16
    torch.testing.assert_close(x_j, x_kv, rtol=0, atol=1e-4)
    torch.testing.assert_close(l_j, l_kv, rtol=0, atol=1e-4)


def test_jacobi_stops_early_near_the_identity():
    block = TarFlowBlock(shape=(1, 8, 8), patch=2, channels=16, layers=2, heads=2)
    randomize_(block, 0.3)
    with torch.no_grad():
        block.head.weight.mul_(1e-3)  # mu, s tiny: x = z + O(1e-3), each iteration shrinks the update ~1e-3
        block.head.bias.zero_()
    z = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        x, _, iterations = block.jacobi(z)
        x_kv, _ = block.inverse(z)
        _, _, capped = block.jacobi(z, tol=0.0, max_iter=2)
    assert iterations <= 4 < block.tokens and capped == 2
    torch.testing.assert_close(x, x_kv, rtol=0, atol=1e-5)


def test_flow_jacobi_samples_equal_kv_samples():
    flow = randomize_(flows["TarFlow"]((1, 8, 8), patch=2, channels=16, depth=2, layers_per_block=1, heads=2,
                                       logit=False), 0.2).eval()
    torch.manual_seed(4)
    kv = flow.sample(3)
    torch.manual_seed(4)
    jac = flow.sample(3, sampler="jacobi")
    torch.manual_seed(4)
    gs = flow.sample(3, sampler="jacobi", segments=4)
    torch.testing.assert_close(jac, kv, rtol=0, atol=1e-4)
    torch.testing.assert_close(gs, kv, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="sampler"):
        flow.sample(3, sampler="newton")


def _class_block(**kw) -> TarFlowBlock:
    return _block(shape=(1, 4, 4), context=1, classes=5, **kw)


@pytest.mark.parametrize("sampler", ["kv", "jacobi"])
@pytest.mark.parametrize("w", [0.0, 2.0])
def test_guided_inverse_follows_the_guidance_rule(sampler, w):
    block = _class_block(flip=True).double()
    z = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    labels = torch.tensor([[0.0], [3.0], [4.0], [1.0]], dtype=torch.float64)
    with torch.no_grad():
        x, ladj = block.inverse(z, labels, sampler=sampler, guidance=w)
        mu_c, s_c = block.conditioner(x, labels)  # the parallel pass at the result, conditional ...
        mu_u, s_u = block.conditioner(x, torch.full_like(labels, 5))  # ... and with the null label
    mu, s = (1 + w) * mu_c - w * mu_u, (1 + w) * s_c - w * s_u
    zs = block._to_seq(z)
    torch.testing.assert_close(block._to_seq(x), zs * torch.exp(s) + mu, rtol=0, atol=1e-10)
    torch.testing.assert_close(ladj, s.flatten(1).sum(-1), rtol=0, atol=1e-10)
    if w == 0:
        torch.testing.assert_close(x, block.inverse(z, labels, sampler=sampler)[0], rtol=0, atol=0)  # conditional
        torch.testing.assert_close(block(x, labels)[0], z, rtol=0, atol=1e-10)


def test_class_block_arguments_are_checked():
    with pytest.raises(ValueError, match="classes"):
        TarFlowBlock(features=4, classes=3)  # context must be 1: the label column
    with pytest.raises(ValueError, match="guidance"):
        _block(shape=(1, 4, 4), context=2).inverse(torch.randn(2, 1, 4, 4), torch.randn(2, 2), guidance=1.0)
    with pytest.raises(ValueError, match="classes"):
        flows["TarFlow"](shape=(1, 4, 4), classes=3, context=2)


def _class_flow(**kw) -> TarFlowModel:
    kw = {"patch": 2, "channels": 16, "depth": 2, "layers_per_block": 1, "heads": 2, "classes": 5, **kw}
    return randomize_(flows["TarFlow"]((1, 4, 4), **kw), 0.2).double().eval()


def test_class_conditional_sampling_shapes_guidance_and_spec():
    flow = _class_flow(logit=False, label_dropout=0.2)
    assert flow.context_features == 1 and flow.spec["kwargs"]["classes"] == 5
    assert rebuild(describe(flow)).label_dropout == 0.2
    assert flow.sample(3, label=2).shape == (3, 1, 4, 4)
    assert flow.sample(3, label=[0, 4], guidance=1.5).shape == (3, 2, 1, 4, 4)
    torch.manual_seed(5)
    plain = flow.sample(3, torch.tensor([2.0], dtype=torch.float64))
    torch.manual_seed(5)
    guided0 = flow.sample(3, label=2, guidance=0.0)
    torch.manual_seed(5)
    guided = flow.sample(3, label=2, guidance=2.0)
    torch.manual_seed(5)
    guided_jacobi = flow.sample(3, label=2, guidance=2.0, sampler="jacobi")
    torch.testing.assert_close(guided0, plain, rtol=0, atol=0)
    assert not torch.allclose(guided, plain)
    torch.testing.assert_close(guided_jacobi, guided, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="labels"):
        flow.sample(2, label=7)
    with pytest.raises(ValueError, match="labels"):
        flow.log_prob(torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.tensor([[0.5], [1.0]], dtype=torch.float64))


def test_label_dropout_trains_the_null_label():
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    labels = torch.arange(6.0, dtype=torch.float64).remainder(5)[:, None]
    always = _class_flow(logit=False, label_dropout=1.0)
    null = torch.full_like(labels, 5)
    torch.testing.assert_close(always.train().log_prob(x, labels), always.eval().log_prob(x, null), rtol=0, atol=0)
    never = _class_flow(logit=False, label_dropout=0.0)
    torch.testing.assert_close(never.train().log_prob(x, labels), never.eval().log_prob(x, labels), rtol=0, atol=0)


def test_cli_samples_a_label_with_guidance(tmp_path):
    from exactflow import checkpoint
    from exactflow.cli import main

    flow = _class_flow(logit=False).float()
    checkpoint.save(tmp_path / "run.safetensors", flow)
    out = tmp_path / "s.npy"
    assert main(["sample", str(tmp_path / "run.safetensors"), "-n", "4", "--label", "3", "--guidance", "2",
                 "-o", str(out)]) == 0
    import numpy as np

    got = torch.from_numpy(np.load(out))
    torch.manual_seed(0)
    torch.testing.assert_close(got, flow.sample(4, label=3, guidance=2.0), rtol=0, atol=1e-6)
