# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ripu_jax quickstart
#
# RIPU (region impurity and prediction uncertainty) active domain adaptation for semantic
# segmentation, end to end on the built-in synthetic benchmark: no download. The notebook
# installs ripu_jax, trains `configs/demo.py` (5 selection rounds buying 2.2% of the target
# domain's pixels; minutes on a GPU or TPU runtime) or, on a CPU runtime, its `:smoke`
# variant (seconds), then shows the regions picked in the last round, the progress plot and
# the final mIoU. The end explains how to train on prepared real data kept on Google Drive.
#
# In Colab: *File > Open notebook > GitHub* with this repository, or open
# `https://colab.research.google.com/github/<owner>/ripu_jax/blob/main/notebooks/quickstart.ipynb`
# (put the repository's owner for `<owner>`). Set `REPO` below to the same repository.
# Inside a checkout (local Jupyter, CI) nothing is cloned or installed.

# %%
import codecs
import json
import os
import shlex
import shutil
import subprocess
import sys

REPO = "https://github.com/<you>/ripu_jax"  # the repository to clone outside a checkout


def find_checkout():
  """The ripu_jax repository root when the notebook runs in it or in its notebooks/ folder."""
  for folder in (os.getcwd(), os.path.dirname(os.getcwd())):
    try:
      with open(os.path.join(folder, "pyproject.toml")) as f:
        if 'name = "ripu_jax"' in f.read():
          return folder
    except OSError:
      pass
  return None


def run(*args):
  """Runs `python ARGS` in the repository, its output shown as it comes; fails if it fails."""
  print("$ python", shlex.join(args), flush=True)
  process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  decoder = codecs.getincrementaldecoder("utf-8")("replace")
  while chunk := process.stdout.read1(1 << 16):  # chunks, not lines: a progress bar uses \r
    print(decoder.decode(chunk), end="", flush=True)
  if process.wait():
    raise RuntimeError(f"exit status {process.returncode} (output above): {shlex.join(args)}")


ROOT = find_checkout()
if ROOT is None:  # Colab, or a folder outside a checkout: clone and install
  ROOT = os.path.abspath("ripu_jax")
  if not os.path.isdir(ROOT):
    subprocess.run(["git", "clone", "--depth", "1", REPO, ROOT], check=True)
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", ROOT], check=True)
  if shutil.which("nvidia-smi"):  # GPU runtime: jax's CUDA build (TPU: "jax[tpu]")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-U", "jax[cuda12]"],
                   check=True)
print("ripu_jax repository:", ROOT)

# %% [markdown]
# ## Smoke run or the full demo
#
# The full demo runs when jax sees an accelerator, the smoke variant on a CPU.
# `RIPU_NOTEBOOK_SMOKE=1` forces the smoke run (CI sets it), `=0` the full demo;
# `RIPU_NOTEBOOK_WORKDIR` names the run folder. jax is asked in a separate process: a
# kernel that imported jax would hold the accelerator (and most of its memory) that the
# training process needs. With Google Drive mounted (first line below), the run folder is
# on Drive and survives a disconnected runtime.

# %%
# from google.colab import drive; drive.mount("/content/drive")
forced = os.environ.get("RIPU_NOTEBOOK_SMOKE", "")
if forced:
  SMOKE = forced != "0"
else:
  backend = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  print("jax backend:", backend[-1])
  SMOKE = backend[-1] == "cpu"
CONFIG = os.path.join(ROOT, "configs", "demo.py") + (":smoke" if SMOKE else "")
runs = "/content/drive/MyDrive/ripu_runs" if os.path.isdir("/content/drive/MyDrive") else (
    os.path.expanduser("~/ripu_runs"))
WORKDIR = os.environ.get("RIPU_NOTEBOOK_WORKDIR") or os.path.join(
    runs, "demo_smoke" if SMOKE else "demo")
print("config:", CONFIG)
print("workdir:", WORKDIR)

# %% [markdown]
# ## Train
#
# Trains on the synthetic source domain and, before each selection round, evaluates on the
# target domain and buys labels for the most informative regions of target images; it
# prints each evaluation and round (the full demo's first comes at step 400). A rerun of this
# cell resumes an interrupted run from its last checkpoint, and returns at once when the run
# has finished (delete the workdir to start over).

# %%
run("-m", "ripu_jax.main", "--config", CONFIG, "--workdir", WORKDIR,
    "--config.progress_bars=False")  # nested bars garble a notebook's output

# %% [markdown]
# ## The regions picked in the last round
#
# Each selection round writes `rounds/<r>/`: the labels bought (`masks/`, `picks.json`) and,
# for a few images, an overlay: image | prediction | score | picked regions.

# %%
from IPython.display import Image, display

rounds_dir = os.path.join(WORKDIR, "rounds")
last = max((name for name in os.listdir(rounds_dir) if name.isdigit()), key=int)
with open(os.path.join(rounds_dir, last, "picks.json")) as f:
  picks = json.load(f)
print(f"round {picks['round']} at step {picks['step']}: strategy {picks['strategy']!r}, "
      f"{sum(len(image['picks']) for image in picks['images'])} regions picked in "
      f"{len(picks['images'])} images")
overlays = os.path.join(rounds_dir, last, "overlays")
for name in sorted(os.listdir(overlays)):
  print(name)
  display(Image(filename=os.path.join(overlays, name)))

# %% [markdown]
# ## Progress and result
#
# The trainer redraws `progress.png` after every evaluation and round: target mIoU against
# step and against the labelled fraction (selection rounds dotted), and the per-class IoU of
# the last evaluation. `final.json` holds the last evaluation on target val.
# `python -m ripu_jax.report --workdir DIR [DIR ...]` puts several runs side by side.

# %%
display(Image(filename=os.path.join(WORKDIR, "progress.png")))
with open(os.path.join(WORKDIR, "final.json")) as f:
  final = json.load(f)
print(f"mIoU {final['miou']:.1f} on target val at step {final['step']}, with "
      f"{100 * final['labelled_fraction']:.2f}% of the target train pixels labelled")
for name, iou in sorted(final["iou"].items(), key=lambda item: -item[1]):
  print(f"  {name:<15} {iou:5.1f}")

# %% [markdown]
# ## Your own data on Google Drive
#
# Real datasets are prepared once into TFDS ArrayRecord folders (README, "Data"): upload the
# original archives to Drive, prepare them into a folder on Drive, and point any config at it
# with `--config.data.data_dir`. The configs with a pretrained backbone also need the
# ImageNet weights converted once (`scripts/convert_torchvision_resnet.py`, README "Models")
# and `--config.model.pretrained` pointing at them. Uncomment and adapt the cell below
# (GTAV -> Cityscapes; `configs/synthia.py` and the others work the same way).
#
# **Resume after a disconnect**: keep the workdir on Drive. When the runtime disconnects,
# reconnect, mount Drive and rerun the cells from the top: the install is repeated, the
# data stay prepared, and the training continues from its last checkpoint.

# %%
# from google.colab import drive; drive.mount("/content/drive")
# DRIVE = "/content/drive/MyDrive"
# DATA = f"{DRIVE}/tensorflow_datasets"
# # Once (then comment out): prepare from the archives uploaded to Drive.
# run("-m", "ripu_jax.data.prepare", "--dataset", "gtav",
#     "--manual_dir", f"{DRIVE}/downloads/gtav", "--data_dir", DATA)
# run("-m", "ripu_jax.data.prepare", "--dataset", "cityscapes",
#     "--manual_dir", f"{DRIVE}/downloads/cityscapes", "--data_dir", DATA)
# # Train (rerun to resume); the workdir on Drive keeps checkpoints, rounds and progress.png.
# run("-m", "ripu_jax.main", "--config", os.path.join(ROOT, "configs", "gtav.py"),
#     "--workdir", f"{DRIVE}/ripu_runs/gtav", f"--config.data.data_dir={DATA}",
#     f"--config.model.pretrained={DRIVE}/weights/resnet101.npz", "--config.progress_bars=False")
