"""The models the test session's TorchServe serves (conftest.py builds their archives), and how it batches."""

PRIMARY_MODEL = DEMO_MODEL = "img2pose"
TRUSTED_MODEL = "img2pose_trusted"
POISON_MODEL = "img2pose_poison"  # the demo model, except that a marked image kills its worker

# config/config.properties serves batchSize 1 (best for online callers on CPU); the session server
# aggregates batches of 8, as GPU deployments do, so that the tests exercise exact batching.
SESSION_BATCH_SIZE = 8
