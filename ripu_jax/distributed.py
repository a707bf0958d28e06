"""One run over several processes: jax.distributed setup, a watchdog, and host-side exchange.

JAX's multi-controller runtime is the engine: every process runs the same program, the mesh
spans every process's devices, and collectives cross hosts (NCCL, TPU ICI, gloo on CPU).
This module adds what a training run needs around it:

* `initialize(...)` from flags or the platform (SLURM, Open MPI, a TPU pod slice), with a
  clear error instead of JAX's abort when the coordinator never answers, and gloo collectives
  on CPU (so the same code runs as several processes on one machine, e.g. in tests).
* A watchdog: every process posts a heartbeat in the coordination service's key-value store;
  when a peer stops (killed, crashed, out of memory) or reports an error, the others print
  which one, and how to resume, and stop. JAX's own check would abort them later with a
  generic message, or leave them blocked in a collective.
* `exchange` / `broadcast`: small host values (iterator states, config text, step sets)
  gathered over the same store, so every process decides alike.

With one process every function is a cheap no-op, so callers need no special case.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import jax

from ripu_jax.errors import UserError

PREFIX = "ripu_jax"
EXIT_PEER_LOST = 75  # the status a process exits with when another one of the run stopped
_state = {"watchdog": None, "calls": 0}


class DistributedError(UserError, RuntimeError):
  """Processes that cannot form one run (no coordinator, different configs, bad counts)."""


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Whether this process writes the run's files (metrics, exports, final.json)."""
  return jax.process_index() == 0


def _cluster_from_environment() -> str | None:
  """The kind of multi-process launch the environment shows, if any."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU pod slice"
  return None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Raises DistributedError unless something accepts connections at `address` in time."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=2):
        return
    except OSError:
      if time.monotonic() > deadline:
        raise DistributedError(
            f"no coordinator answered at {address} within {timeout_s:.0f} s. Start process 0 "
            "(it hosts the coordinator) with the same --coordinator_address, check the host "
            "name and that the port is open between the hosts, or raise "
            "--distributed_timeout") from None
      time.sleep(0.5)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300,
               heartbeat_s: int = 10) -> bool:
  """Joins the processes of a run; returns whether the run has several processes.

  Explicit arguments (all three) win; otherwise a SLURM, Open MPI or TPU pod launch is
  detected and JAX reads the rest from it; otherwise the run is one process. Must come before
  any JAX computation.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  cluster = _cluster_from_environment()
  if any(given) and not all(given):
    raise DistributedError("--coordinator_address, --num_processes and --process_id go "
                           "together: give all three (or none, on SLURM, Open MPI or a TPU "
                           "pod slice, where JAX reads them from the environment)")
  if not any(given) and cluster is None:
    return False
  if all(given):
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id must lie in [0, --num_processes={num_processes}), "
                             f"got {process_id}")
    if num_processes == 1:
      return False
  # Collectives between CPU devices of different processes (tests, CPU clusters); accelerator
  # backends use their own (NCCL, ICI) and ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if all(given) and process_id > 0:
    _wait_for_coordinator(coordinator_address, timeout_s)
  where = f"at {coordinator_address}" if all(given) else f"({cluster})"
  print(f"joining the run's processes {where}; waiting up to {timeout_s} s for all of them",
        file=sys.stderr, flush=True)
  jax.distributed.initialize(
      coordinator_address, num_processes, process_id, initialization_timeout=timeout_s,
      # JAX aborts every process when one misses heartbeats this long; the watchdog below
      # notices sooner and says more.
      heartbeat_timeout_seconds=max(3 * heartbeat_s, 30))
  if jax.process_count() > 1:
    _state["watchdog"] = _Watchdog(heartbeat_s)
    _state["watchdog"].start()
  return jax.process_count() > 1


def _client():
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def _key(*parts) -> str:
  return "/".join([PREFIX, *map(str, parts)])


# ----------------------------------------------------------------------------- exchange

def exchange(name: str, value: str, timeout_s: int = 600) -> list[str]:
  """Every process's `value` for this call, in process order (the same list everywhere).

  Every process must make the same calls in the same order (like a collective)."""
  if jax.process_count() == 1:
    return [value]
  _state["calls"] += 1
  key = _key("exchange", _state["calls"], name)
  client = _client()
  client.key_value_set(_key(key, jax.process_index()), value)
  return [client.blocking_key_value_get(_key(key, p), timeout_s * 1000)
          for p in range(jax.process_count())]


def broadcast(name: str, value: str | None, timeout_s: int = 600) -> str:
  """Process 0's `value`, on every process."""
  if jax.process_count() == 1:
    return value
  _state["calls"] += 1
  key = _key("broadcast", _state["calls"], name)
  client = _client()
  if is_primary():
    client.key_value_set(key, value)
    return value
  return client.blocking_key_value_get(key, timeout_s * 1000)


def barrier(name: str, timeout_s: int = 600) -> None:
  if jax.process_count() > 1:
    _state["calls"] += 1
    _client().wait_at_barrier(_key("barrier", _state["calls"], name), timeout_s * 1000)


def check_same_config(config_json: str, flatten) -> None:
  """Refuses processes started with configs that differ from process 0's, naming the fields."""
  if jax.process_count() == 1:
    return
  texts = exchange("config", config_json)
  if all(text == texts[0] for text in texts):
    return
  mine, first = flatten(json.loads(config_json)), flatten(json.loads(texts[0]))
  others = [p for p, text in enumerate(texts) if text != texts[0]]
  fields = sorted(k for k in set(mine) | set(first) if mine.get(k) != first.get(k))
  if fields:
    shown = "; ".join(f"{k}: {first.get(k)!r} on process 0, {mine.get(k)!r} here"
                      for k in fields[:5])
    raise DistributedError(f"process {jax.process_index()} was started with another config "
                           f"than process 0 ({shown}). Start every process with the same "
                           "command line")
  raise DistributedError(f"processes {others} were started with another config than process "
                         "0 (see their error). Start every process with the same command line")


# ----------------------------------------------------------------------------- watchdog

def report_failure(message: str) -> None:
  """Tells the other processes why this one stops (they stop too, naming it)."""
  if jax.process_count() > 1 and _state["watchdog"] is not None:
    try:
      _client().key_value_set(_key("failed", jax.process_index()), message[:2000],
                              allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (the coordinator may be gone)
      pass


def finish() -> None:
  """Marks this process as done, so the others do not take its silence for a crash."""
  watchdog = _state["watchdog"]
  if watchdog is not None:
    watchdog.stop()


class _Watchdog(threading.Thread):
  """Posts this process's heartbeat and stops the process when a peer stops answering."""

  def __init__(self, heartbeat_s: int):
    super().__init__(name="ripu_jax-watchdog", daemon=True)
    self.interval = max(1.0, heartbeat_s / 5)
    self.timeout = float(heartbeat_s)
    self._stop = threading.Event()
    self._client = _client()
    self._me = jax.process_index()
    self._peers = [p for p in range(jax.process_count()) if p != self._me]

  def stop(self) -> None:
    try:
      self._client.key_value_set(_key("done", self._me), "1", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass
    self._stop.set()

  def _give_up(self, why: str) -> None:
    print(f"\nerror: process {self._me}: {why}. This process stops too: a run spread over "
          "several processes cannot go on without all of them. Rerun every process with the "
          "same command; the run resumes from its last checkpoint.", file=sys.stderr,
          flush=True)
    os._exit(EXIT_PEER_LOST)  # pylint: disable=protected-access  (threads may be blocked)

  def run(self) -> None:
    beats, last_seen = 0, {p: (None, time.monotonic()) for p in self._peers}
    while not self._stop.wait(self.interval):
      beats += 1
      try:
        self._client.key_value_set(_key("alive", self._me), str(beats), allow_overwrite=True)
        for peer in self._peers:
          failed = _try_get(self._client, _key("failed", peer))
          if failed:
            self._give_up(f"process {peer} stopped with an error: {failed}")
          if _try_get(self._client, _key("done", peer)):
            continue
          beat = _try_get(self._client, _key("alive", peer))
          previous, since = last_seen[peer]
          if beat != previous:
            last_seen[peer] = (beat, time.monotonic())
          elif time.monotonic() - since > self.timeout:
            self._give_up(f"process {peer} stopped answering ({self.timeout:.0f} s without a "
                          "heartbeat: killed, crashed or out of memory)")
      except Exception as error:  # pylint: disable=broad-except
        if self._stop.is_set():
          return
        self._give_up(f"lost the coordinator (process 0 stopped, or its host is unreachable: "
                      f"{str(error).splitlines()[0][:200]})")


def _try_get(client, key: str) -> str | None:
  """The store's value of `key`, or None while nobody has set it."""
  try:
    return client.key_value_try_get(key)
  except Exception as error:  # pylint: disable=broad-except  (JaxRuntimeError)
    if "NOT_FOUND" in str(error):
      return None
    raise


# ----------------------------------------------------------------------------- checks

def check_batch(name: str, value: int) -> None:
  """Refuses a global batch size that the processes cannot share evenly."""
  count = jax.process_count()
  if value % count:
    raise DistributedError(f"{name}={value} is not divisible by the {count} processes; each "
                           f"process reads {name} / {count} images. Set it to a multiple of "
                           f"{count} x the devices per process")


def local_rows(value: int) -> int:
  """This process's share of a global batch size."""
  return value // jax.process_count()
