"""Tools around the served model: the archive builder, the demo checkpoint, a TorchServe launcher and
the configuration it starts from (``config/``: the checkout's, or the wheel's copy in ``config/`` here),
readiness waiting, synthetic images, the bad-input corpus and a closed-loop request driver.

Installed with the project, never packed into the model archive (the worker needs none of it).
"""
