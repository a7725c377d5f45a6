"""``palix demo``: the end-to-end demo. It arrives with the demo issue; until then it says so."""


def run(argv):
  del argv
  print("palix demo: not yet available. The end-to-end demo (train, evaluate and report a tiny "
        "PaLI-X on the embedded data) lands with the demo issue; see docs/ for what works now.")
  return 0
