"""The HyTra search space: counts, candidate lists, strings and their errors
(docs/method.md#search-space, #d5)."""

import itertools

import pytest

from bossnas_jax import search_space as ss


@pytest.mark.parametrize("rule,counts", [
    ("restricted", (51, 99, 80, 16)),
    ("step", (131, 115, 80, 16)),
    ("free", (201, 129, 80, 16)),
])
def test_path_counts(rule, counts):
  assert tuple(len(ss.enumerate_paths(k, rule)) for k in (4, 3, 2, 1)) == counts


def test_rule_properties():
  # restricted[2] == step[2] and restricted[1] == step[1] (docs/method.md#paths).
  assert ss.enumerate_paths(2, "restricted") == ss.enumerate_paths(2, "step")
  assert ss.enumerate_paths(1, "restricted") == ss.enumerate_paths(1, "step")
  assert {p[0] for p in ss.enumerate_paths(4)} == {4, 5}
  assert {p[0] for p in ss.enumerate_paths(3)} == {2, 3, 4}
  for k in (1, 2, 3, 4):
    assert set(ss.enumerate_paths(k, "restricted")) <= set(ss.enumerate_paths(k, "step"))
    assert set(ss.enumerate_paths(k, "step")) <= set(ss.enumerate_paths(k, "free"))


def test_op_table():
  assert [o.name for o in ss.OPS] == [
      "ResAtt@7", "ResConv@7", "ResAtt@14", "ResConv@14", "ResConv@28", "ResConv@56"]
  assert [ss.op_scale(o) for o in range(6)] == [0, 0, 1, 1, 2, 3]
  # The val-hook rule (docs/method.md#op-index): pos = idx // 2 if idx < 4 else idx - 2.
  assert all(ss.op_scale(i) == (i // 2 if i < 4 else i - 2) for i in range(6))
  assert [ss.ops_in_block(b) for b in range(4)] == [
      (0, 1, 2, 3, 4, 5), (0, 1, 2, 3, 4), (0, 1, 2, 3), (0, 1, 2, 3)]


def test_candidate_lists():
  counts = {(b, s): len(ss.candidates(b, s)) for b in range(4) for s in ss.input_scales(b)}
  assert counts == {(0, 3): 50, (1, 2): 98, (1, 1): 80, (1, 0): 16,
                    (2, 1): 80, (2, 0): 16, (3, 1): 80, (3, 0): 16}
  # Block 0 is the official restricted_path[4] less '5555' (docs/method.md#d5).
  assert set(ss.enumerate_paths(4)) - set(ss.candidates(0, 3)) == {(5, 5, 5, 5)}
  assert set(ss.enumerate_paths(3)) - set(ss.candidates(1, 2)) == {(4, 4, 4, 4)}
  assert ss.candidates(2, 1) == ss.enumerate_paths(2)


def test_every_candidate_obeys_the_rules():
  for b in range(4):
    for s in ss.input_scales(b):
      for p in ss.candidates(b, s):
        ds = ss.path_layer_scales(p)
        assert ds[0] in (s, s - 1)
        assert all(y in (x, x - 1) for x, y in zip(ds, ds[1:]))
        assert all(o in ss.ops_in_block(b) for o in p)
        if b < 3:
          assert ss.accepts_input(b + 1, ds[-1])
          assert ds[-1] in ss.input_scales(b + 1)


def test_input_scales():
  assert [ss.input_scales(b) for b in range(4)] == [(3,), (2, 1, 0), (1, 0), (1, 0)]
  with pytest.raises(ss.SearchSpaceError, match="block 2 cannot take input at scale 28x28"):
    ss.candidates(2, 2)


def test_path_string_round_trip():
  for b in range(4):
    for s in ss.input_scales(b):
      for p in ss.candidates(b, s):
        assert ss.parse_path(ss.format_path(p), b, s) == p


def test_architecture_round_trip_and_chaining():
  arch = ss.parse_architecture(ss.BOSSNET_T0)
  assert arch.paths == ((5, 4, 3, 3), (3, 2, 3, 0), (0, 0, 1, 0), (0, 0, 0, 0))
  assert str(arch) == ss.BOSSNET_T0
  assert ss.parse_architecture("5433323000100000") == arch
  assert [arch.input_scale(b) for b in range(4)] == [3, 1, 0, 0]
  assert arch.scale_chain() == (1, 0, 0, 0)  # 14, 7, 7, 7: each block's output scale
  assert len(arch.ops) == 16
  # Every chain of a few candidates round-trips.
  for p0, p1 in itertools.islice(itertools.product(ss.candidates(0, 3), ss.candidates(1, 1)), 50):
    if ss.output_scale(p0) != 1:
      continue
    a = ss.check_architecture([p0, p1, (0, 0, 0, 0), (0, 0, 0, 0)])
    assert ss.parse_architecture(str(a)) == a


def test_stage_encoding_of_t0():
  enc = ss.parse_architecture(ss.BOSSNET_T0).stage_encoding()
  assert enc == ((1,), (1,), (1, 1, 1, 0, 1), (0, 0, 0, 1, 0, 0, 0, 0, 0))
  assert ss.format_stage_encoding(enc) == "[[1], [1], [1,1,1,0,1], [0,0,0,1,0,0,0,0,0]]"
  # A scale with no layer gives an empty stage.
  enc = ss.parse_architecture("4433-3333-1111-1111").stage_encoding()
  assert enc[0] == () and enc[1] == (1, 1)
  with pytest.raises(ss.SearchSpaceError, match="position 2 goes back to a finer scale"):
    ss.stage_encoding((0, 5))


@pytest.mark.parametrize("text,message", [
    ("5433-3230-0010", r"expected 4 paths .* found 3"),
    ("5433-3230-0010-000", r"block 3: expected 4 op digits .* found 3"),
    ("54x3-3230-0010-0000", r"position 3: found 'x', which is not an op index 0-5; allowed here: "
                            r"2 \(ResAtt@14\), 3 \(ResConv@14\), 4 \(ResConv@28\)"),
    ("5433-3230-0010-0005", r"block 3, position 4: op 5 \(ResConv@56\) is not allowed: block 3 "
                            r"has no ResConv@56"),
    ("5555-3230-0010-0000", r"block 0, position 4: .* would end at 56x56, which block 1 cannot "
                            r"take; allowed here: 4 \(ResConv@28\)"),
    ("5444-4444-0000-0000", r"block 1, position 4: .* end at 28x28, which block 2 cannot take"),
    ("3433-3230-0010-0000", r"block 0, position 1: op 3 \(ResConv@14\) is not allowed: after the "
                            r"input at 56x56 a layer must stay at that scale or halve it once; "
                            r"allowed here: 4 \(ResConv@28\), 5 \(ResConv@56\)"),
    ("5433-1230-0010-0000", r"block 1, position 2: op 2 \(ResAtt@14\) is not allowed: after op 1 "
                            r"\(ResConv@7\) at 7x7"),
    ("5433-3230-0010-00009", r"block 3: expected 4 op digits .* found 5"),
    ("", r"expected 4 paths"),
])
def test_architecture_errors(text, message):
  with pytest.raises(ss.SearchSpaceError, match=message):
    ss.parse_architecture(text)


def test_other_errors():
  with pytest.raises(ss.SearchSpaceError, match="block index 4 must be an integer in 0..3"):
    ss.parse_path("0000", 4, 0)
  with pytest.raises(ss.SearchSpaceError, match="the input scale must be given"):
    ss.parse_path("0000", 2)
  with pytest.raises(ValueError, match="unknown path rule 'nope'"):
    ss.enumerate_paths(4, "nope")
  with pytest.raises(ValueError, match="stage depth k=5"):
    ss.enumerate_paths(5)
  with pytest.raises(ss.SearchSpaceError, match="expected a string"):
    ss.parse_architecture(1234)


def test_dims():
  full = ss.Dims()
  assert [full.channels(d) for d in range(4)] == [2048, 1024, 512, 256]
  assert [full.fmap(d) for d in range(4)] == [7, 14, 28, 56]
  assert [full.heads(d) for d in (0, 1)] == [8, 4]
  assert full.stem_channels == 64
  tiny = ss.Dims(1 / 16, 32, 8)
  assert [tiny.channels(d) for d in range(4)] == [128, 64, 32, 16]
  assert [tiny.fmap(d) for d in range(4)] == [1, 2, 4, 8]
  with pytest.raises(ValueError, match="resolution=100: .* multiple of 32"):
    ss.Dims(resolution=100)
  with pytest.raises(ValueError, match="whole multiples of 4"):
    ss.Dims(width_multiplier=0.3)
  with pytest.raises(ValueError, match="dim_head=48 does not divide"):
    ss.Dims(dim_head=48)
