"""``optspec check``: is a third-party optimizer a correct implementation of a rule?

The pieces:

* :mod:`optspec.checking.targets` — import a ``module:attribute`` target (a
  ``torch.optim.Optimizer`` subclass or a factory of an optax ``GradientTransformation``),
  map spec hyperparameters and variant knobs to its keyword arguments, and run scenarios
  on it (the code that executes inside the worker process);
* :mod:`optspec.checking.worker` — run those scenarios in a separate process with a time
  limit, so that a target that raises, crashes or hangs is reported per case;
* :mod:`optspec.checking.expected` — float64 reference trajectories of a scenario and their
  budgets from the error model (:mod:`optspec.tolerance`), including the bfloat16 profile;
* :mod:`optspec.checking.diagnose` — when a target does not conform, search the variant
  space of the rule (and of rules with the same hyperparameters) for what it does instead;
* :mod:`optspec.checking.behaviour` — behavioural checks beyond the golden trajectories;
* :mod:`optspec.checking.runner` — the whole check, its human summary and its JSON.
"""

from __future__ import annotations
