"""Workdir files on a disk and in a (emulated) Cloud Storage bucket: the same calls, the same
results; checkpoints in a bucket verified and set aside like on a disk."""

import os

import numpy as np
import pytest

from bossnas_jax.infra import checkpoint_io, files


@pytest.fixture(params=["disk", "bucket"])
def root(request, tmp_path):
  if request.param == "disk":
    return str(tmp_path / "run")
  return request.getfixturevalue("bucket_dir")


def test_whole_file_writes_reads_and_listings(root):
  assert not files.exists(root) and files.listdir(root) == []
  files.makedirs(root)
  files.write_json(os.path.join(root, "a", "config.json"), {"x": 1})
  files.write_text(os.path.join(root, "a", "notes.txt"), "first")
  files.write_text(os.path.join(root, "a", "notes.txt"), "second")  # Replaces the whole file.
  files.write_bytes(os.path.join(root, "b.bin"), b"\0\1\2")
  assert files.read_json(os.path.join(root, "a", "config.json")) == {"x": 1}
  assert files.read_text(os.path.join(root, "a", "notes.txt")) == "second"
  assert files.listdir(root) == ["a", "b.bin"]  # No temporary files left behind.
  assert files.listdir(os.path.join(root, "a")) == ["config.json", "notes.txt"]
  assert files.isdir(os.path.join(root, "a")) and not files.isfile(os.path.join(root, "a"))
  assert files.isfile(os.path.join(root, "b.bin")) and not files.isdir(os.path.join(root, "b.bin"))
  assert files.tree_sizes(root) == {"a/config.json": 8, "a/notes.txt": 6, "b.bin": 3}
  files.copy(os.path.join(root, "b.bin"), os.path.join(root, "c", "b.bin"))
  files.move_tree(os.path.join(root, "a"), os.path.join(root, "moved", "a"))
  assert files.tree_sizes(root) == {"moved/a/config.json": 8, "moved/a/notes.txt": 6,
                                    "b.bin": 3, "c/b.bin": 3}
  assert not files.exists(os.path.join(root, "a", "notes.txt"))
  files.remove(os.path.join(root, "b.bin"))
  files.remove(os.path.join(root, "b.bin"))  # Missing: fine.
  files.rmtree(os.path.join(root, "moved"))
  assert files.tree_sizes(root) == {"c/b.bin": 3}
  with pytest.raises(FileNotFoundError, match="nothing.json"):
    files.read_json(os.path.join(root, "nothing.json"))


def test_append_log_keeps_everything_and_survives_a_reopen(root):
  path = os.path.join(root, "metrics.jsonl")
  log = files.AppendLog(path)
  log.write('{"step": 1}\n')
  log.write(b'{"step": 2}\n')
  log.close()
  log = files.AppendLog(path)  # A resumed run continues the same log.
  log.write('{"step": 3}\n')
  log.close()
  assert files.read_text(path).splitlines() == ['{"step": 1}', '{"step": 2}', '{"step": 3}']


def test_append_log_in_a_bucket_uploads_at_most_every_interval(bucket_dir):
  path = os.path.join(bucket_dir, "tb", "events")
  log = files.AppendLog(path, interval=3600)
  log.write(b"a")  # The first write uploads (nothing was uploaded for an interval).
  log.write(b"b")
  assert files.read_bytes(path) == b"a"
  log.flush()
  assert files.read_bytes(path) == b"ab"
  log.write(b"c")
  log.close()
  assert files.read_bytes(path) == b"abc"
  assert files.rewrite_interval(bucket_dir) == files.REWRITE_SECONDS
  assert files.rewrite_interval("/tmp/run") == 0


def test_unusable_workdirs_are_one_clear_error(gcs_bucket, tmp_path):
  with pytest.raises(files.WorkdirError, match=r"bucket of --workdir gs://no-such-bucket/run "
                                               r"does not exist; create it first"):
    files.check_workdir("gs://no-such-bucket/run")
  (tmp_path / "f").write_text("")
  with pytest.raises(files.WorkdirError, match="is a file; pass a folder"):
    files.check_workdir(str(tmp_path / "f"))
  assert files.check_workdir(f"{gcs_bucket}/new/run") == f"{gcs_bucket}/new/run"
  # An output folder that is a file, or that cannot be created: one line naming it (not an
  # OSError traceback from os.makedirs).
  with pytest.raises(files.WorkdirError, match="is a file, not a folder"):
    files.makedirs(str(tmp_path / "f"))
  with pytest.raises(files.WorkdirError, match="cannot create the folder .*f/sub: Not a dir"):
    files.makedirs(str(tmp_path / "f" / "sub"))
  assert files.absolute("gs://b/x") == "gs://b/x" and files.absolute("x") == os.path.abspath("x")


def _state(value: float):
  return {"w": np.full((64, 32), value, np.float32), "b": np.arange(5, dtype=np.int32)}


# A restore that fails in TensorStore leaves a read future that completes after Orbax closed its
# asyncio loop; Python reports it as an unraisable "Event loop is closed" (harmless).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoints_in_a_bucket_verify_fall_back_and_set_aside(bucket_dir):
  directory = os.path.join(bucket_dir, "checkpoints", "block0")
  checkpoint_io.save(directory, 1, _state(1.0), {"micro": 2})
  checkpoint_io.save(directory, 2, _state(2.0), {"micro": 4})
  assert checkpoint_io.all_steps(directory) == [1, 2]
  manifest = files.read_json(os.path.join(directory, "2", checkpoint_io.FILE_MANIFEST))
  assert manifest and all(isinstance(v, int) for v in manifest.values())  # Sizes in a bucket.
  state, meta, step = checkpoint_io.restore(directory, abstract=_state(0.0))
  assert step == 2 and meta == {"micro": 4} and float(state["w"][0, 0]) == 2.0

  # A truncated object (a partial upload cannot happen, but a user's copy can be cut short).
  sizes = files.tree_sizes(os.path.join(directory, "2"))
  data = max((rel for rel in sizes if "/d/" in rel), key=sizes.get)
  target = os.path.join(directory, "2", data)
  original = files.read_bytes(target)
  files.write_bytes(target, original[:-7])
  state, meta, step = checkpoint_io.restore(directory, abstract=_state(0.0))
  assert step == 1 and float(state["w"][0, 0]) == 1.0
  with pytest.raises(checkpoint_io.CheckpointError, match=f"step 2: {data} differs"):
    checkpoint_io.restore(directory, step=2, abstract=_state(0.0))

  # A flipped byte keeps the size: the array checksums catch what Orbax restores silently.
  flipped = bytearray(original)
  flipped[len(flipped) // 2] ^= 0xFF
  files.write_bytes(target, bytes(flipped))
  with pytest.raises(checkpoint_io.CheckpointError, match="step 2: "):
    checkpoint_io.restore(directory, step=2, abstract=_state(0.0))

  checkpoint_io.set_aside_newer(directory, 1)
  assert checkpoint_io.all_steps(directory) == [1]
  (aside,) = files.listdir(directory + ".corrupt")
  assert aside.startswith("2-") and files.exists(
      os.path.join(directory + ".corrupt", aside, checkpoint_io.FILE_MANIFEST))
  checkpoint_io.save(directory, 2, _state(3.0), {"micro": 4})  # The step number is free again.
  assert checkpoint_io.restore(directory, abstract=_state(0.0))[2] == 2


_COMPILE = """
import sys
import jax, jax.numpy as jnp
from bossnas_jax.infra import compile_cache
compile_cache.enable(sys.argv[1])
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).sum()))
"""


def test_jax_compilation_cache_in_a_bucket(bucket_dir):
  """main_job puts JAX's persistent compilation cache in the workdir: in a bucket JAX writes it
  through etils.epath (gcsfs here); a second process finds the entry there."""
  import subprocess
  import sys
  cache = os.path.join(bucket_dir, "jax_cache")
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}  # The emulator's variables too.
  run = lambda: subprocess.run([sys.executable, "-c", _COMPILE, cache], capture_output=True,
                               text=True, timeout=300, env=env)
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  entries = files.listdir(cache)
  assert entries, "no cache entry was written to the bucket"
  second = run()
  assert second.returncode == 0 and second.stdout == first.stdout
  assert files.listdir(cache) == entries  # A hit: nothing new compiled and written.


def test_a_bucket_workdir_without_gcsfs_is_one_clear_error(without_gcsfs):
  out = without_gcsfs("""
from bossnas_jax.infra import files
try:
  files.check_workdir("gs://bucket/run")
except files.WorkdirError as e:
  print(e)
""")
  assert "cannot open gs://bucket/run" in out
  assert "pip install 'bossnas_jax[gcs]'" in out
