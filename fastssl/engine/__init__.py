"""The training engine: the loop (trainer), gradient caching, optimizers and schedules, DDP set-up,
run-config checks for resume, and the dry run. Imports methods, evaluation, data, models and base;
never a CLI, and never names a method.
"""
