"""Training and evaluation engine: the loop, DDP set-up, checkpoints, schedule, logging.

Import what you need from the submodules (``hcral.engine.train.train``,
``hcral.engine.evaluate.evaluate`` ...); this package imports nothing itself, so that
light modules such as :mod:`hcral.engine.distributed` stay cheap to import.
"""
