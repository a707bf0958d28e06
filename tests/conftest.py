"""Session setup: one persistent XLA compilation cache shared by the whole test run.

Many tests build trainers from the same tiny configs, and every `Trainer` jits its own
functions, so the same programs would be compiled again and again (a resume test compiles
everything twice). With a cache, the second compilation of a program is a file read. The
cache lives in a fresh temporary folder per run, made by the first pytest process and
inherited by pytest-xdist's workers and by subprocesses, so a run never reads programs
compiled by other code; that process removes it at exit. Set JAX_COMPILATION_CACHE_DIR
yourself to keep one between runs.
"""

import atexit
import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="ripu_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
