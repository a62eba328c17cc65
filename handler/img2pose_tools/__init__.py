"""Tools around the served model: the archive builder, the demo checkpoint, a TorchServe launcher,
readiness waiting, synthetic images, the bad-input corpus and a closed-loop request driver.

Installed with the project, never packed into the model archive (the worker needs none of it).
"""
