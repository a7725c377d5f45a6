"""Which ``--gin.NAME=VALUE`` flags a run reads: one that nothing reads is a typo or a wrong flag.

gin accepts a new macro silently (``--gin.TRAIN_STEP=10``, a typo of ``TRAIN_STEPS``, just defines
another macro) and a binding of a configurable that the run never calls
(``--gin.MAX_EVAL_EXAMPLES`` for ``palix train``, ``--gin.schedules.cosine.warmup_steps`` when the
schedule is rsqrt). Two checks, with gin's public API only:

* ``unreferenced_macros`` (right after parsing): a command-line macro that no binding of the parsed
  config refers to (``%NAME`` in ``gin.config_str()``) cannot reach the run.
* ``unread_bindings`` (once the run's configurables have been called): a command-line macro or
  parameter missing from ``gin.operative_config_str()``, the bindings the run actually used.
"""

import difflib
import re
from typing import Dict, Sequence

import gin

from palix import config as palix_config

_MACRO_LINE = re.compile(r"^(?:[\w.]+/)*(?P<name>[A-Za-z_]\w*) = ", re.M)
# 'scope/module.Configurable.param = value' lines of a config string (macros have no dot).
_PARAMETER_LINE = re.compile(r"^(?:(?P<scope>[\w./]+)/)?(?P<selector>[\w.]+)\.(?P<param>\w+) = ",
                             re.M)


def is_macro(name: str) -> bool:
  """gin's rule: a binding name without a dot (after the scope) defines a macro."""
  return "." not in name.rsplit("/", 1)[-1]


def unreferenced_macros(bindings: Sequence[str]) -> Dict[str, str]:
  """``{binding: '--gin.NAME=...: why'}`` for the command-line macros that no binding of the parsed
  config refers to (with the closest known macro names); empty if every macro is referenced."""
  text = gin.config_str()
  known = sorted(set(_MACRO_LINE.findall(text)))
  problems = {}
  for binding in bindings:
    name = palix_config.binding_name(binding)
    if not is_macro(name):
      continue
    macro = name.rsplit("/", 1)[-1]
    if re.search(rf"%{re.escape(macro)}(?![\w.])", text):
      continue
    close = [m for m in difflib.get_close_matches(macro, known, n=2, cutoff=0.75) if m != macro]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    problems[binding] = (f"--gin.{binding.strip()}: no gin binding of this run reads the macro "
                         f"{macro}{hint}")
  return problems


def unread_bindings(bindings: Sequence[str]) -> Dict[str, str]:
  """``{binding: '--gin.NAME=...: why'}`` for the command-line bindings missing from the operative
  config (call it after the run's configurables have been called).

  A macro counts as read if the operative config lists it; a parameter binding if the operative
  config has a binding of the same configurable (resolved with ``gin.get_configurable``, so
  ``trainer.train`` and ``train`` match) and parameter, in any scope.
  """
  operative = gin.operative_config_str()
  used_macros = set(_MACRO_LINE.findall(operative))
  used_parameters = {(_configurable(m.group("selector")), m.group("param"))
                     for m in _PARAMETER_LINE.finditer(operative)}
  problems = {}
  for binding in bindings:
    name = palix_config.binding_name(binding)
    if is_macro(name):
      if name.rsplit("/", 1)[-1] not in used_macros:
        problems[binding] = (f"--gin.{binding.strip()}: this run never read the macro "
                             f"{name.rsplit('/', 1)[-1]}")
      continue
    selector, param = name.rsplit("/", 1)[-1].rsplit(".", 1)
    if (_configurable(selector), param) not in used_parameters:
      problems[binding] = (f"--gin.{binding.strip()}: this run never called {selector}, so the "
                           "binding has no effect")
  return problems


def _configurable(selector: str):
  """The function or class gin registered under ``selector`` (the selector if it is unknown)."""
  try:
    return gin.get_configurable(selector)
  except ValueError:
    return selector
