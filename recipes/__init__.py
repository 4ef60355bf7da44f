"""Built-in recipes, installed as the package ``demux.recipes`` (see pyproject.toml)."""
