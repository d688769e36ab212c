"""Building blocks shared by the supernet and BossNet: PyTorch-faithful convs, BN, PEG, MHSA.

Everything is NHWC. 1x1 convolutions are `nn.Dense` on the channel axis: XLA:CPU runs their weight
gradients several times faster than as convolutions
(benchmarks/block_step.py), and the maths is the same.
On the CPU backend the other convolutions are also computed in forms that XLA:CPU differentiates
far faster than its convolution kernels (`cpu_conv`); the modules and their parameters stay
`nn.Conv`'s, and on GPU/TPU the convolutions are the plain XLA ones.
Initialisers follow PyTorch's defaults (docs/method.md#siamese) so that a freshly built model
matches the official one in distribution.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

# PyTorch's default conv/linear weight init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
  """PyTorch's default bias init, U(+-1/sqrt(fan_in))."""
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def batch_norm(train: bool, name: str, zero_init: bool = False, dtype: Dtype = jnp.float32):
  """BatchNorm with PyTorch's eps 1e-5 and momentum 0.1 (Flax momentum 0.9).

  Without an `axis_name` the statistics are per device inside shard_map, as BossNAS wants.
  """
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones, name=name)


def conv1x1(features: int, name: str, dtype: Dtype, use_bias: bool = False,
            kernel_init=torch_default_init):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=kernel_init,
                  dot_general=cpu_dense_dot, name=name)


def cpu_dense_dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """`lax.dot_general` for `nn.Dense` (x @ kernel on the last axis). On the CPU backend its
  gradient is written out: dx = dy @ kernelᵀ and dkernel = x₂ᵀ @ dy₂ with x and dy flattened to
  (positions, channels). XLA:CPU runs the kernel gradient that autodiff derives (a contraction
  over the batch and spatial axes, under the views' vmap) 1.2-1.5x slower in a whole layer's
  backward (measured on full-size units, 2 cores). Same maths."""
  (lc, rc), (lb, rb) = dimension_numbers
  if (jax.default_backend() != "cpu" or lb or rb or rhs.ndim != 2 or tuple(rc) != (0,)
      or tuple(lc) != (lhs.ndim - 1,) or preferred_element_type is not None):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type)
  return _dense(_varying_like(lhs, rhs), _varying_like(rhs, lhs), precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense(x, kernel, precision):
  return lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def _dense_fwd(x, kernel, precision):
  return _dense(x, kernel, precision), (x, kernel)


def _dense_bwd(precision, res, dy):
  x, kernel = res
  dx = lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())), precision=precision)
  dk = lax.dot_general(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]),
                       (((0,), (0,)), ((), ())), precision=precision)
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


_dense.defvjp(_dense_fwd, _dense_bwd)


def _varying_like(x, like):
  """`x` typed as varying over the mesh axes that `like` varies over (inside shard_map).

  A custom VJP must return each cotangent with its primal's exact type, and the cotangents here
  vary as the output does. So both operands are cast to the union of their varying axes before
  the custom VJP: a replicated kernel's cotangent is then per device, and autodiff's transpose of
  the cast sums it over devices (a psum, what it does for any primitive that mixes replicated and
  split operands).
  Outside shard_map, or where `x` already varies as `like` does, `x` is returned unchanged."""
  missing = tuple(sorted(_varying_axes(like) - _varying_axes(x)))
  return lax.pcast(x, missing, to="varying") if missing else x


def _varying_axes(x) -> frozenset:
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.8; earlier releases: `vma`.
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


def conv(features: int, kernel: int, stride: int, padding: int, name: str, dtype: Dtype,
         groups: int = 1, use_bias: bool = False, in_features: int | None = None):
  """A PyTorch-style conv: explicit symmetric padding ('SAME' pads differently at stride 2)."""
  bias_init = nn.initializers.zeros
  if use_bias:
    bias_init = torch_default_bias_init((in_features // groups) * kernel * kernel)
  return nn.Conv(
      features, (kernel, kernel), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, kernel_init=torch_default_init, bias_init=bias_init,
      conv_general_dilated=cpu_conv, name=name)


# ------------------------------------------------------------------------------------------------
# Convolutions in the forms XLA:CPU differentiates fast. Measured on 2 cores, batch 16 (ms, forward
# / forward + both gradients, before -> after): depthwise 3x3/s2 PEG 128 ch at 56: 77 / 1351 ->
# 7 / 79; patchify k = s = 8, 256 ch at 56: 73 / 6857 -> 11 / 76; dense 3x3/s2 256 -> 512 at 56:
# 337 / 1120 -> 216 / 563. Dense stride-1 3x3 and the 7x7 stem stay XLA convolutions (faster).


def _same_layout(dimension_numbers) -> bool:
  nhwc = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
  return dimension_numbers == nhwc


def _taps(x, kh: int, kw: int, strides, out_hw):
  """The kh*kw strided windows of a padded NHWC input, row-major over the kernel taps."""
  n, _, _, c = x.shape
  (sh, sw), (ho, wo) = strides, out_hw
  for i in range(kh):
    for j in range(kw):
      yield lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                      (1, sh, sw, 1))


def _depthwise_taps(x, kernel, strides, padding):
  """Depthwise conv as a sum of kh*kw shifted, strided multiplies: its gradients are pads, slices
  and per-channel sums, where XLA:CPU's grouped-conv gradients are very slow."""
  kh, kw = kernel.shape[:2]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_hw = ((x.shape[1] - kh) // strides[0] + 1, (x.shape[2] - kw) // strides[1] + 1)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  y = None
  for t, w in zip(_taps(x, kh, kw, strides, out_hw), kernel.reshape(kh * kw, -1)):
    term = t.astype(acc) * w.astype(acc)
    y = term if y is None else y + term
  return y.astype(x.dtype)


def _depthwise_patches(x, kernel):
  """Depthwise conv with kernel = stride and no padding: a weighted sum over each k x k patch."""
  k = kernel.shape[0]
  n, h, w, c = x.shape
  ho, wo = h // k, w // k
  x = x[:, :ho * k, :wo * k].reshape(n, ho, k, wo, k, c)
  acc = jnp.promote_types(x.dtype, jnp.float32)
  y = jnp.sum(x.astype(acc) * kernel[:, :, 0].astype(acc)[None, None, :, None], axis=(2, 4))
  return y.astype(x.dtype)


def _im2col(x, kernel, strides, padding, precision):
  """Dense conv as one matmul over the kh*kw*cin window of each output position."""
  kh, kw, cin, cout = kernel.shape
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_hw = ((x.shape[1] - kh) // strides[0] + 1, (x.shape[2] - kw) // strides[1] + 1)
  patches = jnp.concatenate(list(_taps(x, kh, kw, strides, out_hw)), axis=-1)
  return lax.dot_general(patches, kernel.reshape(kh * kw * cin, cout), (((3,), (0,)), ((), ())),
                         precision=precision)


def _centre_tap(x, kernel, groups: int, precision):
  """A convolution of a 1x1 map whose padding centres the kernel on it (3x3, pad 1, any stride):
  only the centre tap meets the pixel, the others meet padding, so it is that tap's 1x1
  convolution. Left to XLA:CPU, such a convolution copies its whole kernel reversed at every call
  (a 3x3x512x512 kernel is 9.4 MB): at 32x32 the 7x7 scale is 1x1, and those copies made the
  demo's networks up to 2x slower than their parts timed alone (docs/results.md#latency). None for
  a grouped form other than depthwise."""
  kh, kw = kernel.shape[:2]
  w = kernel[kh // 2, kw // 2]  # (cin / groups, cout)
  if groups == 1:
    return cpu_dense_dot(x, w, (((3,), (0,)), ((), ())), precision=precision)
  if groups == x.shape[-1] == kernel.shape[-1] and w.shape[0] == 1:
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return (x.astype(acc) * w[0].astype(acc)).astype(x.dtype)
  return None


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count: int = 1, precision=None):
  """`lax.conv_general_dilated` for `nn.Conv`, in the fastest form on XLA:CPU (same maths; sums in
  another order). Anything else (other backends, dilations, layouts) goes to `lax` unchanged."""
  plain = (jax.default_backend() != "cpu" or isinstance(padding, str)
           or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           or lhs.ndim != 4 or not _same_layout(dimension_numbers))
  if not plain:
    kh, kw, cin_g, cout = rhs.shape
    strides, padding = tuple(window_strides), tuple(tuple(p) for p in padding)
    cin = lhs.shape[-1]
    if lhs.shape[1:3] == (1, 1) and kh % 2 and kw % 2 and padding == ((kh // 2,) * 2,
                                                                        (kw // 2,) * 2):
      y = _centre_tap(lhs, rhs, feature_group_count, precision)
      if y is not None:
        return y
    if feature_group_count == cin == cout and cin_g == 1:
      if (kh, kw) == strides and padding == ((0, 0), (0, 0)):
        return _depthwise_patches(lhs, rhs)
      return _depthwise_taps(lhs, rhs, strides, padding)
    if feature_group_count == 1 and (kh, kw) == (3, 3) and strides == (2, 2):
      return _im2col(lhs, rhs, strides, padding, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      precision=precision)


def peg(channels: int, stride: int, name: str, dtype: Dtype):
  """PEG: depthwise 3x3 conv with bias, stride 1 or 2, pad 1; replaces its input (no residual)."""
  return conv(channels, 3, stride, 1, name, dtype, groups=channels, use_bias=True,
              in_features=channels)


def patchify(channels: int, stride: int, name: str, dtype: Dtype):
  """Depthwise conv with kernel = stride, no bias: the first step of the stem adapters and of the
  projector's `fix_channels`."""
  return conv(channels, stride, stride, 0, name, dtype, groups=channels)


def max_pool(x, window: int, stride: int, padding: int):
  """`nn.max_pool` with a square window and symmetric padding (-inf). On the CPU backend: the
  maximum over the strided window taps, with a gradient that goes, in each window, to the first
  maximal tap in row-major order, as XLA's select-and-scatter does; XLA:CPU runs that
  select-and-scatter several times slower than these slices and selects."""
  if jax.default_backend() != "cpu" or x.ndim != 4:
    return nn.max_pool(x, (window, window), strides=(stride, stride),
                       padding=((padding, padding), (padding, padding)))
  return _max_pool_taps(x, window, stride, padding)


def _max_pool_windows(x, window: int, stride: int, padding: int):
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-jnp.inf)
  out_hw = ((x.shape[1] - window) // stride + 1, (x.shape[2] - window) // stride + 1)
  return list(_taps(x, window, window, (stride, stride), out_hw))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, window, stride, padding):
  return functools.reduce(jnp.maximum, _max_pool_windows(x, window, stride, padding))


def _max_pool_fwd(x, window, stride, padding):
  y = _max_pool_taps(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, res, dy):
  x, y = res
  taps, pullback = jax.vjp(lambda v: _max_pool_windows(v, window, stride, padding), x)
  taken = None
  parts = []
  for t in taps:
    hit = t == y
    first = hit if taken is None else hit & ~taken
    taken = hit if taken is None else taken | hit
    parts.append(jnp.where(first, dy, jnp.zeros_like(dy)))
  return pullback(parts)


_max_pool_taps.defvjp(_max_pool_fwd, _max_pool_bwd)


class MHSA(nn.Module):
  """Multi-head self-attention over all positions, standard form (docs/method.md#d4):
  softmax(q kᵀ/√d) v.

  The qkv projection is one bias-free 1x1 conv to 3·heads·dim_head channels, head-major:
  q = channels [0, h·dh), k = [h·dh, 2h·dh), v = the rest; head i of each uses [i·dh, (i+1)·dh).
  No relative-position embedding and no output projection (docs/method.md#candidate-ops).
  """

  heads: int
  dim_head: int
  dtype: Dtype = jnp.float32
  # BossNet uses kaiming fan-out (docs/method.md#bossnet-definition).
  kernel_init: Any = torch_default_init

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    inner = self.heads * self.dim_head
    qkv = conv1x1(3 * inner, "qkv", self.dtype, kernel_init=self.kernel_init)(x)
    qkv = qkv.reshape(b, h * w, 3, self.heads, self.dim_head)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = q * self.dim_head**-0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    # Softmax in float32 whatever the compute dtype: logits of HW=3136 keys lose mass in bf16.
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v)
    return out.reshape(b, h, w, inner)
