"""The models the test session's TorchServe serves (conftest.py builds their archives), and how it batches."""

PRIMARY_MODEL = DEMO_MODEL = "img2pose"
TRUSTED_MODEL = "img2pose_trusted"
# The demo model at SMALL_SIZES on the torch runtime, except that a marked image kills its worker.
POISON_MODEL = "img2pose_poison"

# config/config.properties serves batchSize 1 (best for online callers on CPU); the session server
# aggregates batches of 8, as GPU deployments do, so that the tests exercise exact batching.
SESSION_BATCH_SIZE = 8

# The committed golden images test_server.py sends over REST (JPEG, RGBA, greyscale, palette and the
# 1400 px cap) and compares with their in-process answers; test_in_process.py compares the others.
REST_GOLDEN_IMAGES = ("01_rgb_640x480.jpg", "02_rgba_480x640.png", "04_gray_320x240.png", "06_palette_100x100.png",
                      "07_rgb_1800x600.jpg")

# Tests of mechanics (request formats, batching, per-request errors, the in-process API, precision and
# runtime switches) run the demo model at this resize: a fraction of a forward at the reference's
# 640/1400 (README, "Tests", has the figures). Parity at the default sizes is test_golden's and
# test_server's; the reference's answers at these sizes are in tests/golden/other_sizes.json.
SMALL_SIZES = {"min_size": 200, "max_size": 400}
SMALL_SIZE_KEY = "{min_size}/{max_size}".format(**SMALL_SIZES)  # its entry in other_sizes.json
