"""What the tests share: fixture plugins, stand-ins for TorchServe, the golden set, the deployment files."""
