"""The meter inside a training job: the device-side counter, the setup of a live model, FlopsMeter, the
Trainer callback, the recipe flag, NVML energy and the hardware bound.
"""
