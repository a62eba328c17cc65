"""The models the test session's TorchServe serves (conftest.py builds their archives)."""

PRIMARY_MODEL = DEMO_MODEL = "img2pose"
TRUSTED_MODEL = "img2pose_trusted"
POISON_MODEL = "img2pose_poison"  # the demo model, except that a marked image kills its worker
