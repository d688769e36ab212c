"""Array layouts: PyTorch tensors <-> Flax leaves. Conv OIHW <-> HWIO (depthwise (C,1,k,k) <->
(k,k,1,C)); 1x1 conv (O,I,1,1) <-> Dense (I,O); Linear (O,I) <-> (I,O); vectors unchanged."""

import numpy as np


def to_flax(a: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return np.transpose(a, (2, 3, 1, 0))
  if layout == "dense1x1":
    return a[:, :, 0, 0].T
  if layout == "linear":
    return a.T
  return a


def to_torch(a: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return np.transpose(a, (3, 2, 0, 1))
  if layout == "dense1x1":
    return a.T[:, :, None, None]
  if layout == "linear":
    return a.T
  return a


def torch_shape(flax_shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  return tuple(to_torch(np.empty(flax_shape, np.uint8), layout).shape)
