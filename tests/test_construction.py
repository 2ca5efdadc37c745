"""One construction path: presets as importable objects, specs for every flow, one vocabulary, context checks."""

import warnings

import pytest
import torch

import exactflow
from exactflow import Compose, Flow, Inverse, StandardNormal, flows
from exactflow.cli import build_parser
from exactflow.distributions import ConditionalDiagNormal
from exactflow.flows import registry
from exactflow.testing import randomize_
from exactflow.transforms import registry as transforms
from exactflow.transforms.autoregressive import MaskedAffineAutoregressive
from exactflow.transforms.coupling import AffineCoupling
from exactflow.transforms.linear import Permutation
from exactflow.transforms.multiscale import Split
from exactflow.transforms.standardize import Standardize

SIZE = {"vector": {"features": 3}, "image": {"shape": (1, 4, 4)}}


def _kwargs(entry, **extra) -> dict:
    return {**SIZE[entry.input], **entry.test_kwargs, **extra}


def _data(entry, shape: tuple[int, ...], n: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    if entry.domain == "unit":
        return 0.1 + 0.8 * torch.rand(n, *shape, generator=gen, dtype=torch.float64)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64)


def _same_module(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return repr(a) == repr(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_preset_is_importable_by_name():
    for name, entry in registry.items():
        assert getattr(flows, name) is entry.factory, name
        assert name in flows.__all__
    from exactflow.flows import MAF, NSF, Glow, RealNVP, TarFlow  # noqa: F401  (the names the docs use)


@pytest.mark.parametrize("name", sorted(registry))
def test_preset_call_registry_and_build_give_the_same_flow(name):
    entry = registry[name]
    kwargs = _kwargs(entry)
    built = []
    for make in (getattr(flows, name), registry[name], lambda **kw: exactflow.build(name, **kw)):
        torch.manual_seed(0)
        built.append(make(**kwargs))
    first = built[0]
    assert first.spec == {"flow": name, "kwargs": kwargs, "preprocess": []}
    for other in built[1:]:
        assert other.spec == first.spec and _same_module(first, other)


@pytest.mark.parametrize("name", sorted(registry))
def test_every_preset_saves_and_loads(name, tmp_path):
    entry = registry[name]
    flow = randomize_(getattr(flows, name)(**_kwargs(entry)), 0.1).double().eval()
    path = exactflow.save(tmp_path / "f.safetensors", flow)
    loaded = exactflow.load(path)
    x = _data(entry, flow.event_shape)
    assert loaded.spec == exactflow.checkpoint.info(path)["spec"] and _same_module(flow, loaded)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


def test_readme_snippet_flow_can_be_saved(tmp_path):
    flow = registry["RealNVP"](features=2)
    exactflow.save(tmp_path / "r.safetensors", flow)
    assert exactflow.load(tmp_path / "r.safetensors").spec["flow"] == "RealNVP"


def _composed() -> Flow:
    torch.manual_seed(0)
    x = torch.randn(50, 4) * 3 + 1
    transform = Compose(Standardize.fit(x), AffineCoupling(4, hidden=(8,)), Permutation(4, seed=3),
                        Inverse(MaskedAffineAutoregressive(4, hidden=(8, 8))))
    return randomize_(Flow(transform, StandardNormal(4)), 0.2)


def test_a_composed_flow_round_trips_through_save_and_load(tmp_path):
    flow = _composed()
    path = exactflow.save(tmp_path / "c.safetensors", flow)
    spec = exactflow.checkpoint.info(path)["spec"]
    assert spec["node"] == "Flow" and [p.get("transform", p.get("node")) for p in spec["args"][0]["args"]] == \
        ["Standardize", "AffineCoupling", "Permutation", "Inverse"]
    loaded = exactflow.load(path)
    assert _same_module(flow, loaded)
    x = torch.randn(7, 4)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x))


def test_a_conditional_composed_flow_and_module_arguments_round_trip(tmp_path):
    torch.manual_seed(0)
    cond = Flow(Compose(AffineCoupling(4, context=2, hidden=(8,)), Permutation(4, seed=0)),
                ConditionalDiagNormal(4, context=2, hidden=(8,)), context=2)
    image = Flow(Split((4, 4, 4), inner=Compose(transforms["ChannelAffineCoupling"](shape=(2, 4, 4), hidden=4))),
                 StandardNormal((4, 4, 4)))
    for flow, x, c in ((cond, torch.randn(5, 4), torch.randn(5, 2)), (image, torch.randn(5, 4, 4, 4), None)):
        randomize_(flow, 0.2)
        loaded = exactflow.load(exactflow.save(tmp_path / "m.safetensors", flow))
        torch.testing.assert_close(loaded.log_prob(x, c), flow.log_prob(x, c))


def test_an_unregistered_part_is_named(tmp_path):
    class Mine(exactflow.Bijection):
        def forward(self, x, context=None):
            return x, x.new_zeros(x.shape[0])

    flow = Flow(Compose(AffineCoupling(4), Mine()), StandardNormal(4))
    with pytest.raises(ValueError, match=r"flow\.transform\.bijections\.1 \(Mine\).*not a registered"):
        exactflow.save(tmp_path / "u.safetensors", flow)
    assert not (tmp_path / "u.safetensors").exists()


def test_the_checksum_covers_the_tree(tmp_path):
    path = exactflow.save(tmp_path / "c.safetensors", _composed())
    data = path.read_bytes()
    seed = b'\\"seed\\": 3'  # inside the header's JSON string
    assert data.count(seed) == 1
    path.write_bytes(data.replace(seed, seed[:-1] + b"4"))
    with pytest.raises(ValueError, match="checksum"):
        exactflow.load(path)


@pytest.mark.parametrize("name, old, value", [("MAF", "transforms", 2), ("Planar", "layers", 2),
                                              ("Glow", "steps", 1), ("TarFlow", "blocks", 1)])
def test_a_deprecated_keyword_still_works_with_a_warning(name, old, value):
    entry = registry[name]
    kwargs = {k: v for k, v in _kwargs(entry).items() if k != "depth"}
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=f"{name}\\({old}=...\\) is deprecated.*depth="):
        flow = getattr(flows, name)(**kwargs, **{old: value})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = getattr(flows, name)(**kwargs, depth=value)
    assert flow.spec == new.spec and _same_module(flow, new)
    with pytest.raises(TypeError, match="both"):
        getattr(flows, name)(**kwargs, depth=value, **{old: value})


def test_an_older_checkpoint_spec_with_a_renamed_keyword_still_builds():
    with pytest.warns(DeprecationWarning):
        flow = flows.rebuild({"flow": "RealNVP", "kwargs": {"features": 2, "transforms": 3}, "preprocess": []})
    assert flow.spec["kwargs"] == {"features": 2, "depth": 3}


def _cases():
    for name, entry in sorted(transforms.items()):
        yield pytest.param(name, 0, id=f"{name}[plain]")
        if entry.conditional:
            yield pytest.param(name, 2, id=f"{name}[ctx]")


@pytest.mark.parametrize("name, ctx", list(_cases()))
def test_context_is_checked_by_every_registered_transform(name, ctx):
    entry = transforms[name]
    b = entry(**{**_kwargs(entry, context=ctx), "features": 4} if entry.input == "vector" else
              _kwargs(entry, context=ctx, shape=entry.test_kwargs.get("shape", (4, 4, 4)))).double().eval()
    shape = (4,) if entry.input == "vector" else tuple(entry.test_kwargs.get("shape", (4, 4, 4)))
    x = _data(entry, shape, n=3)
    wrong = torch.randn(3, 2, dtype=torch.float64) if ctx == 0 else None
    message = "unconditional" if ctx == 0 else "needs a context"
    with pytest.raises(ValueError, match=message):
        b(x, wrong)
    with pytest.raises(ValueError, match=message):
        b.inverse(x, wrong)
    if ctx:
        with pytest.raises(ValueError, match="expected a context of shape"):
            b(x, torch.randn(3, 5, dtype=torch.float64))


def test_unconditional_transforms_refuse_a_context_when_built():
    for entry in transforms.values():
        if not entry.conditional:
            with pytest.raises(ValueError, match="unconditional"):
                entry(**_kwargs(entry, context=2))


def _parse(argv: list[str]):
    return build_parser().parse_args(argv)


def test_the_command_line_spells_construction_options_one_way():
    for hidden in (["64,64"], ["64", "64"], ["64,", "64"]):
        assert _parse(["train", "moons", "--hidden", *hidden]).hidden == [64, 64]
    assert _parse(["vae", "--hidden", "32,16"]).hidden == [32, 16]
    for flag in ("--depth", "--layers", "--transforms"):
        assert _parse(["train", "moons", flag, "3"]).depth == 3
        assert _parse(["vi", flag, "3"]).layers == 3
        assert _parse(["vae", flag, "3"]).layers == 3
    for flag in ("--batch-size", "--batch"):
        assert _parse(["train", "moons", flag, "32"]).batch_size == 32
        assert _parse(["vi", flag, "32"]).batch == 32
        assert _parse(["vae", flag, "32"]).batch == 32
        assert _parse(["eval", "runs/x", flag, "32"]).batch_size == 32
    for flag in ("--no-plots", "--no-plot"):
        assert _parse(["train", "moons", flag]).plots is False
        assert _parse(["vi", flag]).no_plot is True


def test_a_config_file_takes_any_spelling(tmp_path):
    from exactflow.cli import _apply_config

    config = tmp_path / "run.toml"
    config.write_text('hidden = [32, "16,8"]\nbatch = 64\ntransforms = 2\n')
    argv = ["train", "moons", "--config", str(config)]
    args = _apply_config(build_parser(), argv, _parse(argv))
    assert (args.hidden, args.batch_size, args.depth) == ([32, 16, 8], 64, 2)


def test_a_bijection_of_your_own_is_called_as_written():
    class Shift(exactflow.Bijection):  # declares no context_features: not checked
        def forward(self, x):
            return x + 1, x.new_zeros(x.shape[0])

        def inverse(self, z, context=None):
            return z - 1, z.new_zeros(z.shape[0])

    b, x = Shift(), torch.randn(3, 2)
    assert torch.equal(b(x)[0], x + 1) and torch.equal(b.inverse(x, torch.randn(3, 4))[0], x - 1)
