from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"
METRICS_YAML = CONFIG_DIR / "metrics.yaml"
if not METRICS_YAML.exists():  # fall back to TorchServe's own defaults
    import ts

    METRICS_YAML = Path(ts.__file__).parent / "configs" / "metrics.yaml"
