"""The config package (see the README's Layout section)."""
