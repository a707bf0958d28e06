"""Experiments built on the trainer: protocols that run, resume and tabulate many runs.

`compare`: the acquisition strategies compared on the synthetic benchmark (the command line
is scripts/compare_strategies.py). A protocol lives here, not in its script, so that tests and
other tools reach its settings, configs and tables by import; the script only parses flags.
"""
