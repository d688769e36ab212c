"""Checkpoint import/export: official key layouts, round trips, errors, verified Orbax files, and
(when PyTorch is installed) logits parity with a PyTorch transcription of BossNet."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bossnas_jax import search_space as ss
from bossnas_jax.convert import cli as convert_cli
from bossnas_jax.convert import keys as convert_keys
from bossnas_jax.convert import state_dicts as convert
from bossnas_jax.infra import checkpoint_io
from bossnas_jax.models import bossnet
from bossnas_jax.models import bossnet_spec as bs
from bossnas_jax.models import checkpoint as model_checkpoint

try:
  import torch
except ImportError:  # the optional `torch` extra
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch (the `torch` extra) not installed")

TINY_T0 = bs.named_config("bossnet_t0", width_multiplier=0.125, dim_head=16, num_classes=10)


def _random_tree(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _assert_trees_equal(a, b):
  fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in fa] == [p for p, _ in fb]
  for (p, x), (_, y) in zip(fa, fb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


@pytest.fixture(scope="module")
def tiny_t0():
  model = bossnet.BossNet(TINY_T0)
  variables = _random_tree(bossnet.variable_shapes(model, 64))
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
  return model, variables


# ------------------------------------------------------------------------------------------------
# Layouts.


def test_t0_state_dict_matches_the_official_listing():
  shapes = convert.bossnet_state_dict_shapes("bossnet_t0")
  assert len(shapes) == 380  # docs/method.md#bossnet-keys
  want = {
      "conv1.weight": (64, 3, 7, 7),
      "bn1.running_var": (64,),
      "bn1.num_batches_tracked": (),
      "layer1.0.downsample.1.weight": (256, 64, 1, 1),
      "layer1.0.downsample.2.weight": (256,),
      "layer1.0.conv1.weight": (64, 64, 1, 1),
      "layer1.0.peg.conv.weight": (64, 1, 3, 3),
      "layer1.0.peg.conv.bias": (64,),
      "layer1.0.conv2.weight": (64, 64, 3, 3),
      "layer1.0.conv3.weight": (256, 64, 1, 1),
      "layer1.0.se.fc1.weight": (16, 256, 1, 1),
      "layer1.0.se.fc1.bias": (16,),
      "layer1.0.se.fc2.weight": (256, 16, 1, 1),
      "layer2.0.downsample.1.weight": (512, 256, 1, 1),
      "layer4.3.conv1.weight": (512, 2048, 1, 1),
      "layer4.3.peg.conv.weight": (512, 1, 3, 3),
      "layer4.3.conv2.weight": (512, 512, 3, 3),
      "layer4.3.conv3.weight": (2048, 512, 1, 1),
      "layer4.3.se.fc1.weight": (128, 2048, 1, 1),
      "layer3.3.proj.0.weight": (256, 1024, 1, 1),
      "layer3.3.proj.1.conv.weight": (256, 1, 3, 3),
      "layer3.3.proj.1.conv.bias": (256,),
      "layer3.3.proj.2.weight": (256,),
      "layer3.3.net.1.to_qkv.weight": (768, 256, 1, 1),
      "layer3.3.net.2.weight": (256,),
      "layer3.3.net.4.weight": (1024, 256, 1, 1),
      "layer3.3.net.5.weight": (1024,),
      "layer4.0.shortcut.1.weight": (2048, 1024, 1, 1),
      "layer4.0.shortcut.2.weight": (2048,),
      "layer4.0.proj.0.weight": (512, 1024, 1, 1),
      "layer4.0.proj.1.conv.weight": (512, 1, 3, 3),
      "layer4.0.net.1.to_qkv.weight": (1536, 512, 1, 1),
      "layer4.0.net.4.weight": (2048, 512, 1, 1),
      "fc.weight": (1000, 2048),
      "fc.bias": (1000,),
  }
  assert {k: shapes[k] for k in want} == want
  assert not any(k.startswith(("layer4.3.downsample", "layer3.3.shortcut")) for k in shapes)
  assert {k.split(".downsample")[0] for k in shapes if ".downsample." in k} == {
      "layer1.0", "layer2.0", "layer3.0"}
  nose = convert.bossnet_state_dict_shapes("bossnet_t0_nose")
  assert set(shapes) - set(nose) == {k for k in shapes if ".se." in k}
  assert convert.bossnet_state_dict_shapes("bossnet_t1") == shapes
  empty = convert.bossnet_state_dict_shapes("4420-1100-0000-0000")
  assert empty["layer1.0.0.weight"] == (256, 64, 3, 3) and "layer1.0.1.running_mean" in empty


# ------------------------------------------------------------------------------------------------
# Round trips.


def test_bossnet_round_trip_gives_identical_outputs(tiny_t0, tmp_path):
  model, variables = tiny_t0
  sd = convert.export_bossnet(variables, TINY_T0)
  assert all(v.dtype == np.int64 for k, v in sd.items() if k.endswith("num_batches_tracked"))
  path = str(tmp_path / "t0.npz")
  convert.save_npz(sd, path)
  back, report = convert.import_bossnet(convert.load_state_dict(path), TINY_T0)
  assert report.ok and report.matched == len(sd) - len(report.ignored)
  _assert_trees_equal(back, variables)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 64, 64, 3)), jnp.float32)
  np.testing.assert_array_equal(bossnet.eval_logits(model, back, x),
                                bossnet.eval_logits(model, variables, x))


TINY_SIZES = convert_keys.SupernetSizes(ss.Dims(1 / 16, 64, 16), 64, 32, 48)


@pytest.fixture(scope="module")
def tiny_supernet():
  shapes = convert.supernet_shapes(TINY_SIZES)
  return _random_tree(shapes, seed=1)


def test_supernet_round_trip_and_ignored_keys(tiny_supernet):
  sd = convert.export_supernet(tiny_supernet, TINY_SIZES)
  assert "online_backbone._blocks.1._block_layers.0._mix_ops.2.net.1.to_qkv.weight" in sd
  assert "online_backbone._blocks.0._block_layers.0.downsamples.4_8.1.weight" in sd
  assert "online_necks.3.fix_channels.64.1.weight" in sd
  assert "heads.2.predictor.bn0.running_var" in sd
  assert "target_backbone._blocks.3._block_layers.3._mix_ops.0.shortcut_d.0.weight" in sd
  extra = {
      "backbone.conv1.weight": sd["online_backbone.conv1.weight"],
      "online_backbone._stem.0.weight": sd["online_backbone.conv1.weight"],
      "online_net.1.fc0.weight": sd["online_necks.0.fc0.weight"],
      "head.predictor.fc0.bias": sd["heads.0.predictor.fc0.bias"],
      "online_backbone._blocks.0._block_layers.0._mix_ops.0.proj_d.0.weight":
          np.zeros((8, 64, 1, 1), np.float32),
      "online_backbone._blocks.0._block_layers.0._mix_ops.3.downsample_d.1.running_mean":
          np.zeros((64,), np.float32),
  }
  back, report = convert.import_supernet({**sd, **extra}, TINY_SIZES)
  _assert_trees_equal(back, tiny_supernet)
  reasons = report.ignored_counts()
  assert reasons["alias of another prefix (docs/method.md#supernet-keys)"] == 3
  assert reasons["alias of conv1 / bn1"] == 1
  assert sum(n for r, n in reasons.items() if r.startswith("not used by bossnas_jax")) == 2
  assert "not used by bossnas_jax" in report.summary()
  # Without the target side the import holds the online parts only; sizes come from the shapes.
  online = {k: v for k, v in sd.items() if not k.startswith("target_")}
  back, _ = convert.import_supernet(online, dim_head=16)
  assert set(back) == {"backbone", "necks", "predictors"}
  _assert_trees_equal(back["backbone"], tiny_supernet["backbone"])


def test_cli_supernet(tiny_supernet, tmp_path):
  npz, out = str(tmp_path / "search.npz"), str(tmp_path / "ckpt")
  online = {k: v for k, v in tiny_supernet.items() if not k.startswith("target")}
  convert.save_npz(convert.export_supernet(online, TINY_SIZES), npz)  # fewer arrays: faster
  assert convert_cli.main(["import", npz, out, "--model", "supernet", "--dim-head", "16"]) == 0
  back, meta = model_checkpoint.load(out)
  assert meta["kind"] == "supernet"
  sizes = convert_keys.SupernetSizes.from_dict(meta["sizes"])
  assert sizes.dims.width_multiplier == 1 / 16 and sizes.dims.dim_head == 16
  assert (sizes.neck_hidden, sizes.neck_out, sizes.pred_hidden) == (64, 32, 48)
  _assert_trees_equal(back, online)


# ------------------------------------------------------------------------------------------------
# Errors.


def test_wrong_key_wrong_shape_and_model_mismatch(tiny_t0):
  _, variables = tiny_t0
  sd = convert.export_bossnet(variables, TINY_T0)
  bad = dict(sd)
  bad["layer3.1.conv1x.weight"] = bad.pop("layer3.1.conv1.weight")
  bad["fc.bias"] = np.zeros((11,), np.float32)
  with pytest.raises(convert.ConversionError) as e:
    convert.import_bossnet(bad, TINY_T0)
  msg = str(e.value)
  assert "layer3.1.conv1x.weight" in msg and "unmatched" in msg
  assert "layer3.1.conv1.weight -> params/layer3_1/conv1/kernel" in msg and "missing" in msg
  assert "fc.bias: shape (11,), expected (10,)" in msg
  _, report = convert.import_bossnet(bad, TINY_T0, strict=False)
  assert (len(report.unmatched), len(report.missing), len(report.mis_shaped)) == (1, 1, 1)
  with pytest.raises(convert.ConversionError, match="encoding"):
    convert.import_bossnet(sd, TINY_T0.replace(encoding=((1,), (1,), (1, 1, 1, 1, 1), (0,) * 9)))
  with pytest.raises(convert.ConversionError, match="SE modules") as e:
    convert.import_bossnet(sd, TINY_T0.replace(se=False))
  assert "--se yes" in str(e.value) and "--act silu" in str(e.value)  # Both, not SE alone.
  _, report = convert.import_bossnet(sd, TINY_T0)
  assert f"activation {TINY_T0.act}, SE on" in report.summary()
  with pytest.raises(convert.ConversionError, match="not a HyTra search checkpoint"):
    convert.import_supernet(sd)


def test_unreadable_files(tiny_t0, tmp_path, monkeypatch):
  _, variables = tiny_t0
  path = str(tmp_path / "t0.npz")
  convert.save_npz(convert.export_bossnet(variables, TINY_T0), path)
  data = open(path, "rb").read()
  cut = str(tmp_path / "cut.npz")
  with open(cut, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(convert.ConversionError, match="truncated"):
    convert.load_state_dict(cut)
  with pytest.raises(convert.ConversionError, match="no such file"):
    convert.load_state_dict(str(tmp_path / "absent.npz"))
  for name in ("fake.npz", "fake.pth"):  # Neither a zip archive nor a pickle: not a checkpoint.
    fake = str(tmp_path / name)
    with open(fake, "wb") as f:
      f.write(b"not a checkpoint")
    with pytest.raises(convert.ConversionError, match="is not a checkpoint") as e:
      convert.load_state_dict(fake)
    assert "pickle=" not in str(e.value)  # No advice about pickles that leads nowhere.
  pth = str(tmp_path / "t0.pth")
  with open(pth, "wb") as f:
    f.write(b"PK\x03\x04 a zip archive as torch.save writes")
  monkeypatch.setitem(sys.modules, "torch", None)  # as if the extra were not installed
  with pytest.raises(convert.ConversionError, match=r"bossnas_jax\[torch\]"):
    convert.load_state_dict(pth)


def test_cli_verified_checkpoint_and_export(tiny_t0, tmp_path, capsys):
  model, variables = tiny_t0
  npz = str(tmp_path / "t0.npz")
  convert.save_npz(convert.export_bossnet(variables, TINY_T0), npz)
  out = str(tmp_path / "ckpt")
  assert convert_cli.main(["import", npz, out, "--model", "bossnet_t0", "--dim-head", "16"]) == 0
  assert "keys matched" in capsys.readouterr().out
  loaded_model, loaded = model_checkpoint.load_bossnet(out)
  assert loaded_model.config == TINY_T0.replace(name="bossnet_t0")
  _assert_trees_equal(loaded, variables)
  npz2 = str(tmp_path / "back.npz")
  assert convert_cli.main(["export", out, npz2]) == 0
  a, b = convert.load_state_dict(npz), convert.load_state_dict(npz2)
  assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
  # A model the file does not fit: one line with the reason, exit status 1, nothing written.
  assert convert_cli.main(["import", npz, str(tmp_path / "x"), "--model", "bossnet_t0_nose",
                       "--dim-head", "16"]) == 1
  err = capsys.readouterr().err
  assert err.startswith("python -m bossnas_jax.convert: error: ") and "SE modules" in err
  assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "x")
  # A flipped byte in an array's data is caught by the checksums.
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(out, "0", "state"))
           for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
  target = max(files, key=os.path.getsize)
  raw = bytearray(open(target, "rb").read())
  raw[len(raw) // 2] ^= 0xFF
  with open(target, "wb") as f:
    f.write(bytes(raw))
  with pytest.raises(checkpoint_io.CheckpointError):
    model_checkpoint.load(out)


# ------------------------------------------------------------------------------------------------
# Parity with PyTorch (a transcription of the official modules, docs/method.md#bossnet-definition).


def _torch_bossnet(config):
  nn = torch.nn

  def pool(stride):
    if stride == 1:
      return nn.Identity()
    return nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)

  class PEG(nn.Module):
    def __init__(self, c, stride):
      super().__init__()
      self.conv = nn.Conv2d(c, c, 3, stride, 1, groups=c)

    def forward(self, x):
      return self.conv(x)

  class SE(nn.Module):
    def __init__(self, c):
      super().__init__()
      self.fc1 = nn.Conv2d(c, bs.se_width(c), 1)
      self.fc2 = nn.Conv2d(bs.se_width(c), c, 1)

    def forward(self, x):
      return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))

  class ResConv(nn.Module):
    def __init__(self, s, act):
      super().__init__()
      p, out = s.width, s.out_channels
      self.conv1, self.peg, self.bn1 = nn.Conv2d(s.in_channels, p, 1, bias=False), PEG(
          p, s.stride), nn.BatchNorm2d(p)
      self.conv2, self.bn2 = nn.Conv2d(p, p, 3, 1, 1, bias=False), nn.BatchNorm2d(p)
      self.conv3, self.bn3 = nn.Conv2d(p, out, 1, bias=False), nn.BatchNorm2d(out)
      self.se = SE(out) if s.se else None
      self.downsample = nn.Sequential(pool(s.stride), nn.Conv2d(s.in_channels, out, 1, bias=False),
                                      nn.BatchNorm2d(out)) if s.shortcut else None
      self.act = act()

    def forward(self, x):
      y = self.act(self.bn1(self.peg(self.conv1(x))))
      y = self.bn3(self.conv3(self.act(self.bn2(self.conv2(y)))))
      y = self.se(y) if self.se is not None else y
      return self.act(y + (x if self.downsample is None else self.downsample(x)))

  class Attention(nn.Module):
    def __init__(self, c, heads, dh):
      super().__init__()
      self.heads, self.dh = heads, dh
      self.to_qkv = nn.Conv2d(c, 3 * heads * dh, 1, bias=False)

    def forward(self, x):
      b, _, h, w = x.shape
      q, k, v = self.to_qkv(x).reshape(b, 3 * self.heads, self.dh, h * w).chunk(3, dim=1)
      attn = ((q * self.dh**-0.5).transpose(-2, -1) @ k).softmax(-1)
      return (v @ attn.transpose(-2, -1)).reshape(b, -1, h, w)

  class ResAtt(nn.Module):
    def __init__(self, s, act, dh):
      super().__init__()
      a, out = s.width, s.out_channels
      self.shortcut = nn.Sequential(pool(s.stride), nn.Conv2d(s.in_channels, out, 1, bias=False),
                                    nn.BatchNorm2d(out)) if s.shortcut else nn.Identity()
      self.proj = nn.Sequential(nn.Conv2d(s.in_channels, a, 1, bias=False), PEG(a, s.stride),
                                nn.BatchNorm2d(a))
      self.net = nn.Sequential(act(), Attention(a, s.heads, dh), nn.BatchNorm2d(s.heads * dh),
                               act(), nn.Conv2d(s.heads * dh, out, 1, bias=False),
                               nn.BatchNorm2d(out))
      self.act = act()

    def forward(self, x):
      return self.act(self.net(self.proj(x)) + self.shortcut(x))

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      act = nn.SiLU if config.act == "silu" else nn.ReLU
      c = config.stem_channels
      self.conv1, self.bn1 = nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c)
      self.act1, self.maxpool = act(), nn.MaxPool2d(3, 2, 1)
      stages = [[] for _ in range(bs.NUM_STAGES)]
      for s in bs.layout(config):
        if s.kind == "empty":
          stages[s.stage].append(nn.Sequential(
              nn.Conv2d(s.in_channels, s.out_channels, 3, 2, 1, bias=False),
              nn.BatchNorm2d(s.out_channels), act()))
        elif s.kind == "conv":
          stages[s.stage].append(ResConv(s, act))
        else:
          stages[s.stage].append(ResAtt(s, act, config.dim_head))
      for i, blocks in enumerate(stages):
        self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
      self.fc = nn.Linear(config.num_features, config.num_classes)

    def forward(self, x):
      x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(x.mean((2, 3)))

  net = Net()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():  # non-trivial BN (the zero-init γ would hide the residual branches)
    for m in net.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
  return net.eval()


@needs_torch
@pytest.mark.parametrize("model,resolution", [
    ("bossnet_t0", 64), ("bossnet_t0_nose", 64), ("bossnet_t1", 64),
    # an empty first stage, so stage 4 starts from an odd 3x3 map: ceil-mode pooling
    ("4421-1100-0000-0000", 96)])
def test_logits_match_pytorch(model, resolution, tmp_path):
  torch.manual_seed(0)
  # The official builder's layout (an empty stage is a stride-2 conv), as the PyTorch model has it.
  config = bs.resolve_config(model, width_multiplier=0.25, empty_stage_stride="official")
  net = _torch_bossnet(config)
  path = str(tmp_path / "model.pth")
  torch.save({"model": net.state_dict()}, path)  # DeiT's layout: the state_dict under 'model'
  variables, report = convert.import_bossnet(convert.load_state_dict(path), config)
  assert report.ok
  x = np.random.default_rng(0).standard_normal((2, resolution, resolution, 3)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = np.asarray(bossnet.eval_logits(bossnet.BossNet(config), variables, jnp.asarray(x)))
  assert np.abs(got - ref).max() <= 1e-4 * ref.std()


@needs_torch
def test_truncated_pth(tmp_path):
  path = str(tmp_path / "m.pth")
  torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, path)
  assert convert.load_state_dict(path)["conv1.weight"].shape == (8, 3, 7, 7)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(convert.ConversionError, match="truncated"):
    convert.load_state_dict(path)
