"""embedkit's own commands beside LightningCLI's."""
