"""TarFlow behaviour the generic contract cannot see: cached sampling, causal structure, denoising."""

import pytest
import torch

from exactflow import Compose
from exactflow.distributions import Flow, StandardNormal
from exactflow.flows import registry as flows
from exactflow.flows.tarflow import denoise
from exactflow.images import bits_per_dim
from exactflow.testing import randomize_
from exactflow.transforms.elementwise import ElementwiseAffine
from exactflow.transforms.tarflow import TarFlowBlock, patchify, unpatchify


def _block(**kw) -> TarFlowBlock:
    kw = {"shape": (1, 8, 8), "patch": 2, "channels": 16, "layers": 2, "heads": 2, **kw}
    return randomize_(TarFlowBlock(**kw)).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("flip", [False, True])
def test_kv_cache_inverse_equals_recomputation(dtype, flip):
    block = _block(flip=flip, context=3).to(dtype)  # 16 patches
    z = torch.randn(5, 1, 8, 8, dtype=dtype)
    c = torch.randn(5, 3, dtype=dtype)
    with torch.no_grad():
        x_cache, l_cache = block.inverse(z, c, use_cache=True)
        x_full, l_full = block.inverse(z, c, use_cache=False)
    torch.testing.assert_close(x_cache, x_full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l_cache, l_full, atol=1e-5, rtol=1e-5)
    z_back, _ = block(x_cache, c)
    torch.testing.assert_close(z_back, z, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-4)


def test_flow_samples_with_cache_equal_samples_without():
    flow = flows["TarFlow"](shape=(1, 8, 8), patch=2, channels=16, blocks=2, layers_per_block=1, heads=2)
    randomize_(flow, 0.2)
    blocks = [b for b in flow.transform.bijections if isinstance(b, TarFlowBlock)]
    z = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        x_cache, _ = flow.transform.inverse(z)
        for b in reversed(blocks):
            z, _ = b.inverse(z, use_cache=False)
        x_full, _ = flow.transform.bijections[0].inverse(z)
    torch.testing.assert_close(x_cache, x_full, atol=1e-5, rtol=1e-5)


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
    torch.testing.assert_close(unpatchify(patchify(x, 2), (2, 4, 6), 2), x)
    block = _block(shape=None, features=6, patch=2)
    assert block.tokens == 3 and block.token_dim == 2
    v = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(block.inverse(block(v)[0])[0], v, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="patch"):
        TarFlowBlock(shape=(1, 6, 6), patch=4)
    with pytest.raises(ValueError, match="heads"):
        TarFlowBlock(features=4, channels=10, heads=4)
    with pytest.raises(ValueError, match="exactly one"):
        flows["TarFlow"](shape=(1, 4, 4), features=16)


def test_image_tarflow_gives_bits_per_dim():
    flow = flows["TarFlow"](shape=(1, 8, 8), patch=2, channels=16, blocks=2, layers_per_block=1, heads=2)
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
    var = torch.exp(2 * affine.log_scale.detach())
    expected = y - sigma**2 * (y - affine.loc.detach()) / var
    torch.testing.assert_close(denoise(flow, y, sigma), expected)
